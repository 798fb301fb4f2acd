"""The official qdrant-client against `agentdrill serve`: collection, upsert,
query, and snapshot round trips: restore in place and into region B from a
snapshot URL, from a downloaded file uploaded as multipart, and from a
`file://` location."""
import os
import tempfile
import urllib.request

from qdrant_client import QdrantClient, models

from common import check, control

control("POST", "/reset")
a = QdrantClient(url=os.environ["QDRANT_URL"])
b = QdrantClient(url=os.environ["QDRANT_URL_REGION_B"])
a.create_collection("memory", vectors_config=models.VectorParams(size=4, distance=models.Distance.COSINE))
check(a.collection_exists("memory") and not b.collection_exists("memory"), "collection in region A only")
points = [models.PointStruct(id=i, vector=[1.0, i / 10, 0.5, 0.1], payload={"job_id": f"job-{i}"}) for i in range(1, 6)]
a.upsert("memory", points=points, wait=True)
hits = a.query_points("memory", query=[1.0, 0.3, 0.5, 0.1], limit=2).points
check(len(hits) == 2 and hits[0].id == 3 and hits[0].payload["job_id"] == "job-3", f"nearest point {hits[0].id}")
check(a.count("memory").count == 5, "five points")
check(a.get_collection("memory").points_count == 5, "collection info")

snap = a.create_snapshot("memory")
check(snap.name in [s.name for s in a.list_snapshots("memory")], "snapshot listed")
a.upsert("memory", points=[models.PointStruct(id=99, vector=[0.0, 1.0, 0.0, 0.0], payload={"late": True})], wait=True)
check(a.count("memory").count == 6, "a write after the snapshot")

location = f"{os.environ['QDRANT_URL']}/collections/memory/snapshots/{snap.name}"
check(b.recover_snapshot("memory", location=location, wait=True), "region B recovers A's snapshot")
check(b.count("memory").count == 5, "region B holds the snapshot's five points (RPO: the late write is lost)")
got = b.retrieve("memory", ids=[2], with_payload=True)
check(got[0].payload == {"job_id": "job-2"}, "restored payloads")

check(a.recover_snapshot("memory", location=location, wait=True), "region A restores in place")
check(a.count("memory").count == 5, "region A back at the snapshot")
# Download the snapshot file, upload it to region B (multipart, as the client
# sends it) and recover region A from it as a file:// location.
with urllib.request.urlopen(location) as r:
    data = r.read()
with tempfile.NamedTemporaryFile(suffix=".snapshot", delete=False) as f:
    f.write(data)
    path = f.name
with open(path, "rb") as fh:
    up = b.http.snapshots_api.recover_from_uploaded_snapshot("uploaded", wait=True, snapshot=fh)
check(up.result is True, f"upload recovered: {up}")
check(b.count("uploaded").count == 5, "the uploaded snapshot's five points")
check(b.get_collection("uploaded").config.params.vectors.size == 4, "the upload brings the collection's config")
got = b.retrieve("uploaded", ids=[4], with_payload=True, with_vectors=True)
check(got[0].payload == {"job_id": "job-4"} and abs(got[0].vector[1] - 0.4) < 1e-6, "uploaded contents")
a.upsert("memory", points=[models.PointStruct(id=98, vector=[0.0, 0.0, 1.0, 0.0])], wait=True)
check(a.count("memory").count == 6, "another late write")
check(a.recover_snapshot("memory", location=f"file://{path}", wait=True), "recover from a file:// location")
check(a.count("memory").count == 5, "region A back at the snapshot from the file")
os.unlink(path)

check(a.delete_snapshot("memory", snap.name, wait=True), "snapshot deleted")
check(snap.name not in [s.name for s in a.list_snapshots("memory")], "no longer listed")
print("qdrant-client: all checks passed")
