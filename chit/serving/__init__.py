"""How a chit process serves HTTP: the token server's and the gateway's `listen`, HTTPS that
follows its files, HTTP limits, worker processes, and uvicorn with all of them."""
