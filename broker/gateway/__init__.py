"""Gateway mode (issue 9): broker in front of a Plaid-compatible upstream, holding its credentials and tokens."""
