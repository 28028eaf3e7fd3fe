"""The pool-wide queue as the asking daemon runs it: submit and withdraw, caps, and coalesced positions."""
