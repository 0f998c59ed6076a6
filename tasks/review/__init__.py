"""Human review of model outputs: the queue store, the reviewers' web page and the `medlora review` commands."""
