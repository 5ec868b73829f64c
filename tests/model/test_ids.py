"""Server-assigned ids (model.ids): valid FHIR ids, unique across threads and forked
processes, and in creation order within a process."""
import os
import threading
import uuid

from fhirgw.model.ids import new_id
from fhirgw.model.resources import is_valid_id


def test_ids_are_version_8_uuids_and_valid_fhir_ids():
    ids = [new_id() for _ in range(1000)]
    for i in ids:
        u = uuid.UUID(i)
        assert str(u) == i and u.version == 8 and u.variant == uuid.RFC_4122
        assert is_valid_id(i)


def test_ids_sort_in_creation_order_and_share_their_prefix():
    ids = [new_id() for _ in range(100_000)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert len({i[:13] for i in ids}) == 1      # the process's 48 random bits
    # not guessable from a neighbour: the low 34 bits are random
    assert len({int(i.replace("-", ""), 16) & ((1 << 34) - 1) for i in ids[:1000]}) > 990


def test_unique_across_threads():
    out: list[list[str]] = [[] for _ in range(8)]

    def work(k):
        out[k] = [new_id() for _ in range(20_000)]
    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [i for part in out for i in part]
    assert len(set(every)) == len(every)
    assert all(part == sorted(part) for part in out)


def test_a_forked_child_draws_its_own_prefix():
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:   # the child: report one id and leave without running pytest's exit
        os.write(w, new_id().encode())
        os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    child = os.read(r, 64).decode()
    os.close(r)
    assert child[:13] != new_id()[:13]


def test_random_bits_are_not_shared_with_a_forked_child():
    new_id()   # the parent has buffered random bytes
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(w, ",".join(new_id() for _ in range(50)).encode())
        os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    child = os.read(r, 1 << 16).decode().split(",")
    os.close(r)
    low = (1 << 34) - 1
    mine = {int(i.replace("-", ""), 16) & low for i in (new_id() for _ in range(50))}
    assert not mine & {int(i.replace("-", ""), 16) & low for i in child}


def test_random_bits_cover_several_buffer_refills():
    from fhirgw.model import ids
    n = 3 * ids._RANDOM_BLOCK // 5
    lows = [int(i.replace("-", ""), 16) & ((1 << 34) - 1) for i in (new_id() for _ in range(n))]
    assert len(set(lows)) > n - 5
    assert max(lows) > (1 << 33)   # the high bit of the 34 is in use
