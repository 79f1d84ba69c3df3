"""Every database query of the node, one module per aggregate.

Callers pass a Session and commit at their own boundary (request, job step, C-STORE); functions
here never commit, so several changes plus their audit rows land in one transaction.
"""
