"""An embedded XenStore daemon: sans-I/O model, wire codec and a Unix-socket server.

:mod:`~xenoffload.xenstored.model` holds the semantics, :mod:`~xenoffload.xenstored.wire` the
frame codec, :mod:`~xenoffload.xenstored.dispatch` turns frames into model calls and
:mod:`~xenoffload.xenstored.server` serves them on Unix sockets.
"""
