"""The trained model: tokenizer, training, evaluation, and the prompt they share."""
