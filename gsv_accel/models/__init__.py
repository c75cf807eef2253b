"""Model definitions: SoVITS (stage 2) and, later, the GPT text-to-semantic stage (stage 1)."""
