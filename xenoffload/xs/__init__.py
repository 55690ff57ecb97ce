"""XenStore without I/O: the vocabulary both ends speak and the rules a server applies.

The bottom layer under :mod:`xenoffload.store` (clients) and :mod:`xenoffload.xenstored` (the
socket server); it imports nothing else of xenoffload.

- :mod:`~xenoffload.xs.values`: permissions and watch events.
- :mod:`~xenoffload.xs.errors`: XenStoreError, StoreUnavailable, TransactionAborted.
- :mod:`~xenoffload.xs.wire`: message types, frames, limits and the incremental frame parser.
- :mod:`~xenoffload.xs.requests`: request encoders and reply decoders for clients.
- :mod:`~xenoffload.xs.model`: the store's semantics (tree, permissions, transactions, watches,
  quotas), as C xenstored applies them.
- :mod:`~xenoffload.xs.dispatch`: one request's bytes in, the reply's bytes out.
- :mod:`~xenoffload.xs.locked`: the model behind a lock, for harnesses that share it.
"""
