"""soqa: curation of Stack Overflow Python Q&A as DVC stages, and a T5 trained on the result."""
