"""Attestors: one package per platform, each holding the verifier chit runs and the
collector an agent runs, behind the small interfaces of `chit.attestors.base`.

A platform package imports nothing heavy at its top: an agent imports its
`collector` module (standard library only), the server its `verifier`.
"""
