"""Two processes talking over a Pipe: objects both ways, then raw bytes."""

import rmp as multiprocessing


def echo(conn):
    while True:
        msg = conn.recv()
        if msg is None:
            break
        conn.send(("echo", msg))
    conn.send_bytes(b"bye")
    conn.close()


if __name__ == "__main__":
    parent, child = multiprocessing.Pipe()
    p = multiprocessing.Process(target=echo, args=(child,))
    p.start()
    for msg in [1, "two", [3, 3, 3], {"four": 4}]:
        parent.send(msg)
        print(parent.recv())
    parent.send(None)
    print(parent.recv_bytes())
    p.join()
