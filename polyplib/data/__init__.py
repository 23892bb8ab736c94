"""Data: embedded phantom, real dataset loaders, verified download, splits and preparation."""
