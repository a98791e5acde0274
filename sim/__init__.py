"""The pool on one machine, for developers and tests: never on a worker VM or a server.

``python -m sim.fleet`` (simulated worker VMs: a real agent each, with a fake IMDS and
code-server, documentation public IPs from sim/addresses.py), ``workerpool dev`` (sim/dev.py:
the whole pool; its environment and emulators in sim/devenv.py, its children in
sim/supervisor.py), the emulated AWS they run against (sim/motoserver.py on a port from
sim/ports.py; or DynamoDB Local for DynamoDB) and the tests' helpers (sim/fakes.py,
sim/tap.py).

Installed with the ``[local]`` extra, which brings the AWS emulator (moto). How the
emulator differs from AWS, and what we do about it: docs/emulators.md.
"""
