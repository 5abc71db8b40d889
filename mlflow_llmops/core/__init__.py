"""One of each helper the other packages share: config base, time, errors."""
