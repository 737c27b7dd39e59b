"""The DDP rendezvous listens on the node's address only, not on every
interface (torch's own TCPStore server binds the wildcard address)."""

from __future__ import annotations

import socket
import subprocess
import sys

from avser.platform.rendezvous import bound_listener

# Any 127/8 address is loopback on Linux: one that is not 127.0.0.1 shows the
# store bound to the address it was given rather than to loopback by default.
NODE_ADDRESS = "127.0.0.2"

RANK = """
import subprocess, sys, torch, torch.distributed as dist
from avser.platform.rendezvous import join_process_group
rank, port = int(sys.argv[1]), int(sys.argv[2])
join_process_group("gloo", rank, 2, "{address}", port, timeout_s=60)
total = torch.tensor([rank + 1.0]); dist.all_reduce(total)
print("sum", int(total.item()))
if rank == 0:
    print(subprocess.run(["ss", "-ltnH", f"sport = :{{port}}"], capture_output=True, text=True).stdout)
dist.barrier(); dist.destroy_process_group()
""".format(address=NODE_ADDRESS)


def _free_port(address: str) -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        return sock.getsockname()[1]


def test_bound_listener_listens_on_the_given_address_only():
    sock = bound_listener(NODE_ADDRESS, 0)
    try:
        assert sock.getsockname()[0] == NODE_ADDRESS
    finally:
        sock.close()


def test_two_ranks_rendezvous_on_the_node_address_only(tmp_path):
    script = tmp_path / "rank.py"
    script.write_text(RANK)
    port = _free_port(NODE_ADDRESS)
    ranks = [subprocess.Popen([sys.executable, str(script), str(rank), str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in (1, 0)]
    outputs = [rank.communicate(timeout=120)[0] for rank in ranks]
    for rank, output in zip(ranks, outputs):
        assert rank.returncode == 0, output
        assert "sum 3" in output  # the group works
    listeners = [line.split()[3] for line in outputs[1].splitlines() if line.startswith("LISTEN")]
    assert listeners == [f"{NODE_ADDRESS}:{port}"]
    assert f"DDP rendezvous listening on {NODE_ADDRESS}:{port}" in outputs[1]
