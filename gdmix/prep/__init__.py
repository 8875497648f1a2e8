"""Spark data preparation: raw rows -> contract datasets, index maps and entity partitions."""
