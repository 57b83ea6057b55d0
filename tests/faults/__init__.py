"""The fault-injection suite (issue 16): nemeses, workloads and their checkers, a history
recorder, and the runner for CI's bounded runs and long soaks."""
