"""``fastfog bench``: measures the proxy path against a direct connection, in one run.

- ``servers``: the origins (reply, HTTP keep-alive, bulk);
- ``load``: the load generator (raw sockets on loop callbacks);
- ``netns``: the private network namespace everything runs in;
- ``run``: starting it all, pinning CPUs, and the report.
"""
