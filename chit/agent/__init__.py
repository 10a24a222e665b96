"""chit's client side, what an agent's machine runs: one exchange on the command
line (`chit exchange`), or a sidecar that keeps credential files fresh
(`chit agent`). The evidence comes from the collectors in `attestors/`; of the
server, only the contract's names (token type URNs) are shared.

- `client.collect`: which collector (a platform, or the first one found);
- `client.exchange`: the RFC 8693 request to chit's `/token` and the issued credential;
- `client.agent`: the renewal loop and its files;
- `client.cli`: the two commands.
"""
