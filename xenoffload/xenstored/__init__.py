"""The embedded XenStore daemon: serves :mod:`xenoffload.xs`'s model on Unix sockets.

:mod:`~xenoffload.xenstored.server` is the asyncio server and its limits,
:mod:`~xenoffload.xenstored.harness` runs one in a thread for tests (with fault injection),
:mod:`~xenoffload.xenstored.daemon` runs one as a process (``xenoffload xenstored``).
"""
