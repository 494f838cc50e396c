"""``revnet_app.train``: fine-tuning, evaluation and the paper's experiments (see ``revnet_app``)."""
