from mlflow_llmops.cli import main

main()
