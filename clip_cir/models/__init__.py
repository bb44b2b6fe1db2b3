"""CLIP models and what turns their features into queries: loading, preprocessing, the Combiner,
checkpoints, the Hugging Face Hub."""
