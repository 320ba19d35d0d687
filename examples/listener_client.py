"""A Listener and a Client with an authentication key, in two processes."""

import rmp as multiprocessing
from rmp.connection import Client, Listener

KEY = b"secret password"


def client(address):
    with Client(address, authkey=KEY) as conn:
        conn.send(["sum", [1, 2, 3, 4]])
        print("client got:", conn.recv(), flush=True)


if __name__ == "__main__":
    with Listener(("127.0.0.1", 0), authkey=KEY) as listener:
        p = multiprocessing.Process(target=client, args=(listener.address,))
        p.start()
        with listener.accept() as conn:
            op, args = conn.recv()
            conn.send(sum(args) if op == "sum" else None)
        p.join()
    print("client exit code:", p.exitcode)
