"""Datasets: preparation into Arrow (`datasets`), import from GPT-SoVITS folders, bucketed loading."""
