"""data_prep: offline dataset tools (image lists -> LMDB, means, PCA colour statistics, demo data)."""
