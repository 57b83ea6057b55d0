"""Authentication and authorization: bearer tokens (tokens.py), principals and their
roles kept in etcd (store.py), followed on every replica by one watch (cache.py), and
which role each RPC needs (roles.py). The interceptor is the one place that uses them."""
