"""The lab: what the tests (tests/) and the benchmarks (benchmarks/) run squid-helper against.

Real processes and real sockets, never mocks: HTTP mirrors, a DNS server and Squid itself, all
bound to 127.0.0.0/8 only; real RPM repositories and the real dnf; `squid-helper` driven over
stdin/stdout as Squid drives it. Every process or server is stopped by whoever started it
(context managers, try/finally underneath), and every wait is bounded in time.

Modules, one job each:

* mirrors: HTTP(S) mirrors on 127.0.0.1 (good, hanging, 500, HEAD-refusing, far) and fake
  repos.
* tls: a test CA, and certificates for https:// mirrors (good, wrong name, unknown CA).
* helper: the `squid-helper` command, a driver for it, its repos.yaml.
* procfs: process trees and figures from /proc.
* httpclient: HTTP clients for the proxy: one request per connection, or many kept alive.
* dns: a loopback DNS server that answers NXDOMAIN.
* squid: a real Squid with the helpers wired in, and its logs; a plain parent proxy.
* rpmrepo: real RPMs, repositories from createrepo_c, isolated dnf clients.
* soak: mixed load through a real Squid, with resource samples and error counts.
* redis: a real redis-server on a loopback port, for the shared memo of a fleet.
* serve: `squid-helper serve` as an operator runs it (one proxy of a lab or of a fleet).

Nothing here imports pytest: skipping or failing for missing prerequisites is the tests' job.
Both tests/ and benchmarks/ import this package; neither imports the other.
"""
