//! The vector fakes, a Qdrant REST subset, one per region: collections,
//! upsert, retrieve, query/search, count, and snapshots (create, list,
//! download, delete, recover from a location: a snapshot URL of this
//! instance or a `file://` path of a downloaded snapshot, and upload).
//!
//! Every collection is a [`VectorStore`]: which value each point holds, when
//! it was written, corruption, O(1) snapshots and restore are its semantics.
//! A point's value is the hash of its vector and payload; the content behind
//! a hash is kept in an append-only, content-addressed table, so a snapshot
//! (a prefix of the store's op log) always finds its contents. Point ids are
//! interned to [`PointId`]s. The stores share their op logs by `Rc`, so both
//! regions live on one thread (the [`Actor`]); handlers send it closures.
//! Recovering region B from region A's snapshot URL hands the snapshot over
//! in memory, as the simulator ships it.

use std::collections::BTreeMap;
use std::sync::mpsc;

use axum::Json;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Multipart, Path, State};
use axum::response::Response;
use axum::routing::{get, post, put};
use rustc_hash::FxHashMap;
use serde_json::{Value, json};

use super::Fake;
use super::http::{Ctx, fnv, json_response};
use crate::components::ids::{JobId, Micros};
use crate::components::vector::{PointId, Snapshot, VectorConfig, VectorStore};

/// Most points one upsert may carry.
pub const MAX_UPSERT_POINTS: usize = 10_000;
/// Most results a query may ask for.
pub const MAX_LIMIT: usize = 1_000;
/// Most collections per region.
pub const MAX_COLLECTIONS: usize = 64;
/// Largest snapshot file an upload or a `file://` recovery may bring, in bytes.
pub const MAX_SNAPSHOT_BYTES: usize = 256 << 20;
/// The Qdrant version the fake reports (the client checks compatibility).
pub const QDRANT_VERSION: &str = "1.20.0";

/// A point's content: its original id, vector and payload.
#[derive(Clone, Debug)]
struct Content {
    vector: Vec<f32>,
    payload: Value,
}

/// One collection.
#[derive(Debug)]
struct Collection {
    size: usize,
    distance: String,
    store: VectorStore,
}

/// Both regions' stores, the point-id interning and the content table.
#[derive(Debug, Default)]
pub struct World {
    regions: [BTreeMap<String, Collection>; 2],
    ids: FxHashMap<String, PointId>,
    names: Vec<Value>,
    contents: FxHashMap<u64, Content>,
    now_base: Option<std::time::Instant>,
}

type Job = Box<dyn FnOnce(&mut World) + Send>;

/// The thread that owns the [`World`].
#[derive(Debug)]
pub struct Actor {
    tx: mpsc::Sender<Job>,
}

impl Actor {
    /// Starts the thread.
    pub fn spawn() -> Self {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("agentdrill-vector".into())
            .spawn(move || {
                let mut w = World { now_base: Some(std::time::Instant::now()), ..World::default() };
                while let Ok(job) = rx.recv() {
                    job(&mut w);
                }
            })
            .expect("spawn the vector thread");
        Actor { tx }
    }

    /// Runs `f` on the world and returns its result.
    pub async fn call<R: Send + 'static>(&self, f: impl FnOnce(&mut World) -> R + Send + 'static) -> R {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |w| {
            let _ = tx.send(f(w));
        });
        self.tx.send(job).expect("the vector thread lives as long as the actor");
        rx.await.expect("the vector thread answers")
    }

    /// Empties both regions (the content table and interning stay: they are
    /// append-only and hold nothing a fresh store can see).
    pub fn reset(&self) {
        let job: Job = Box::new(|w| w.regions = Default::default());
        self.tx.send(job).expect("the vector thread lives as long as the actor");
    }
}

fn ok(result: Value) -> Response {
    json_response(200, &json!({ "result": result, "status": "ok", "time": 0.000_1 }))
}

fn err(status: u16, msg: &str) -> Response {
    json_response(status, &json!({ "status": { "error": msg }, "time": 0.000_1 }))
}

fn not_found(c: &str) -> Response {
    err(404, &format!("Not found: Collection `{c}` doesn't exist!"))
}

fn region(f: Fake) -> usize {
    usize::from(f == Fake::VectorB)
}

impl World {
    fn now_us(&self) -> Micros {
        self.now_base.map_or(0, |b| u64::try_from(b.elapsed().as_micros()).unwrap_or(u64::MAX))
    }

    fn intern(&mut self, id: &Value) -> PointId {
        let key = id.to_string();
        if let Some(&p) = self.ids.get(&key) {
            return p;
        }
        let n = u32::try_from(self.names.len()).expect("under 2^32 points");
        let p = PointId { job: JobId(n >> 16), step: (n & 0xffff) as u16 };
        self.ids.insert(key, p);
        self.names.push(id.clone());
        p
    }

    /// Interns a point's id and stores its content; the point and the value
    /// (the hash of its vector and payload) to write to a store.
    fn put(&mut self, id: &Value, vector: Vec<f32>, payload: Value) -> (PointId, u64) {
        let bits: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
        let value = fnv(payload.to_string().as_bytes(), fnv(&bits, 0xcbf2_9ce4_8422_2325));
        self.contents.entry(value).or_insert(Content { vector, payload });
        (self.intern(id), value)
    }

    fn name_of(&self, p: PointId) -> &Value {
        &self.names[((p.job.0 << 16) | u32::from(p.step)) as usize]
    }

    /// A point as Qdrant shows it (`score` added by queries).
    fn record(&self, p: PointId, value: u64, with_vector: bool) -> Value {
        let c = &self.contents[&value];
        let vector = if with_vector { json!(c.vector) } else { Value::Null };
        json!({ "id": self.name_of(p), "payload": c.payload, "vector": vector, "version": 0 })
    }

    /// The snapshot file: the collection's config and the points the
    /// snapshot holds (restored into a scratch store by the store's own
    /// restore). [`World::restore_file`] reads it back.
    fn snapshot_file(&self, col: &Collection, snap: &Snapshot) -> Value {
        let mut scratch = VectorStore::new(VectorConfig::default());
        scratch.restore(0, snap);
        let pts: Vec<Value> = scratch.points_iter().map(|(p, s)| self.record(p, s.value, true)).collect();
        json!({ "snapshot": snap.name, "taken_at_us": snap.taken_at_us,
                "config": { "size": col.size, "distance": col.distance }, "points": pts })
    }

    fn describe(&self, col: &Collection, snap: &Snapshot) -> Value {
        let size = self.snapshot_file(col, snap).to_string().len();
        json!({ "name": snap.name, "creation_time": null, "size": size, "checksum": null })
    }

    /// Recovers collection `c` of region `r` from a snapshot file (an upload
    /// or a `file://` location): the file's points go into a scratch store,
    /// whose snapshot (named as the file says) the collection receives and
    /// restores with [`VectorStore::restore`], as a recovery from a URL
    /// does. The collection is created, or takes the file's config. Returns
    /// the points restored.
    fn restore_file(&mut self, r: usize, c: String, file: &Value) -> Result<u64, String> {
        let (Some(name), Some(taken_at_us), Some(points)) =
            (file["snapshot"].as_str(), file["taken_at_us"].as_u64(), file["points"].as_array())
        else {
            return Err("it needs `snapshot`, `taken_at_us` and `points`".into());
        };
        let cfg = &file["config"];
        let (Some(size), Some(distance)) = (cfg["size"].as_u64(), cfg["distance"].as_str()) else {
            return Err("it needs `config`: {size, distance}".into());
        };
        let size = usize::try_from(size).map_err(|_| "config.size is too large".to_owned())?;
        if !self.regions[r].contains_key(&c) && self.regions[r].len() >= MAX_COLLECTIONS {
            return Err(format!("the region already holds {MAX_COLLECTIONS} collections"));
        }
        let parsed: Vec<_> = points.iter().map(|p| parse_point(p, size)).collect::<Result<_, _>>()?;
        let mut scratch = VectorStore::new(VectorConfig::default());
        for (id, vector, payload) in parsed {
            let (p, value) = self.put(&id, vector, payload);
            scratch.upsert(taken_at_us, p, value);
        }
        let mut snap = scratch.snapshot(taken_at_us);
        name.clone_into(&mut snap.name);
        let now = self.now_us();
        let store = VectorStore::new(VectorConfig::default());
        let col = self.regions[r].entry(c).or_insert(Collection { size, distance: distance.to_owned(), store });
        (col.size, col.distance) = (size, distance.to_owned());
        col.store.receive_snapshot(snap.clone());
        Ok(col.store.restore(now, &snap))
    }
}

/// The vector fake's routes.
pub fn router() -> Router<Ctx> {
    Router::new()
        .route("/", get(root))
        .route("/collections", get(list_collections))
        .route("/collections/{c}", get(get_collection).put(create_collection).delete(delete_collection))
        .route("/collections/{c}/exists", get(exists))
        .route("/collections/{c}/points", put(upsert).post(retrieve))
        .route("/collections/{c}/points/query", post(query))
        .route("/collections/{c}/points/search", post(search))
        .route("/collections/{c}/points/count", post(count))
        .route("/collections/{c}/snapshots", get(list_snapshots).post(create_snapshot))
        .route("/collections/{c}/snapshots/recover", put(recover))
        .route(
            "/collections/{c}/snapshots/upload",
            post(upload_snapshot).layer(DefaultBodyLimit::max(MAX_SNAPSHOT_BYTES)),
        )
        .route("/collections/{c}/snapshots/{name}", get(download_snapshot).delete(delete_snapshot))
}

async fn root() -> Response {
    json_response(
        200,
        &json!({ "title": "qdrant - vector search engine (agentdrill fake)", "version": QDRANT_VERSION, "commit": null }),
    )
}

async fn list_collections(State(ctx): State<Ctx>) -> Response {
    let r = region(ctx.fake);
    let names = ctx.shared.vector.call(move |w| w.regions[r].keys().cloned().collect::<Vec<_>>()).await;
    let cols: Vec<Value> = names.into_iter().map(|n| json!({ "name": n })).collect();
    ok(json!({ "collections": cols }))
}

async fn exists(State(ctx): State<Ctx>, Path(c): Path<String>) -> Response {
    let r = region(ctx.fake);
    let e = ctx.shared.vector.call(move |w| w.regions[r].contains_key(&c)).await;
    ok(json!({ "exists": e }))
}

async fn get_collection(State(ctx): State<Ctx>, Path(c): Path<String>) -> Response {
    let r = region(ctx.fake);
    let info = ctx
        .shared
        .vector
        .call(move |w| w.regions[r].get(&c).map(|col| (col.size, col.distance.clone(), col.store.len())))
        .await;
    let Some((size, distance, points)) = info else { return not_found("requested") };
    ok(json!({ "status": "green", "optimizer_status": "ok", "indexed_vectors_count": 0, "points_count": points,
        "segments_count": 1, "payload_schema": {},
        "config": { "params": { "vectors": { "size": size, "distance": distance }, "shard_number": 1,
                "replication_factor": 1, "write_consistency_factor": 1, "on_disk_payload": true },
            "hnsw_config": { "m": 16, "ef_construct": 100, "full_scan_threshold": 10_000, "max_indexing_threads": 0, "on_disk": false },
            "optimizer_config": { "deleted_threshold": 0.2, "vacuum_min_vector_number": 1_000, "default_segment_number": 0,
                "max_segment_size": null, "memmap_threshold": null, "indexing_threshold": 20_000, "flush_interval_sec": 5,
                "max_optimization_threads": null },
            "wal_config": { "wal_capacity_mb": 32, "wal_segments_ahead": 0 }, "quantization_config": null } }))
}

async fn create_collection(State(ctx): State<Ctx>, Path(c): Path<String>, Json(body): Json<Value>) -> Response {
    let v = &body["vectors"];
    let (Some(size), Some(distance)) = (v["size"].as_u64(), v["distance"].as_str()) else {
        return err(400, "Wrong input: `vectors` needs `size` and `distance` (one unnamed vector per point)");
    };
    if !["Cosine", "Dot", "Euclid"].contains(&distance) || size == 0 || size > 65_536 {
        return err(
            400,
            &format!("Wrong input: distance `{distance}` / size {size}: use Cosine, Dot or Euclid and 1..=65536"),
        );
    }
    let (r, distance) = (region(ctx.fake), distance.to_owned());
    let made = ctx
        .shared
        .vector
        .call(move |w| {
            let regs = &mut w.regions[r];
            if regs.contains_key(&c) || regs.len() >= MAX_COLLECTIONS {
                return false;
            }
            let store = VectorStore::new(VectorConfig::default());
            regs.insert(c, Collection { size: size as usize, distance, store });
            true
        })
        .await;
    if made { ok(json!(true)) } else { err(400, "Wrong input: collection already exists (or the region holds 64)") }
}

async fn delete_collection(State(ctx): State<Ctx>, Path(c): Path<String>) -> Response {
    let r = region(ctx.fake);
    let gone = ctx.shared.vector.call(move |w| w.regions[r].remove(&c).is_some()).await;
    ok(json!(gone))
}

/// Parses one point of an upsert.
fn parse_point(p: &Value, size: usize) -> Result<(Value, Vec<f32>, Value), String> {
    let id = p["id"].clone();
    if !(id.is_u64() || id.is_string()) {
        return Err(format!("Wrong input: point id {id} must be an unsigned integer or a UUID"));
    }
    let vector: Vec<f32> = p["vector"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).map(|x| x as f32).collect())
        .unwrap_or_default();
    if vector.len() != size {
        return Err(format!("Wrong input: Vector dimension error: expected dim: {size}, got {}", vector.len()));
    }
    Ok((id, vector, p["payload"].clone()))
}

async fn upsert(State(ctx): State<Ctx>, Path(c): Path<String>, Json(body): Json<Value>) -> Response {
    let Some(points) = body["points"].as_array().cloned() else {
        return err(400, "Wrong input: expected `points`: [{id, vector, payload}] (the batch form is not supported)");
    };
    if points.len() > MAX_UPSERT_POINTS {
        return err(400, &format!("Wrong input: at most {MAX_UPSERT_POINTS} points per upsert"));
    }
    let r = region(ctx.fake);
    let res = ctx
        .shared
        .vector
        .call(move |w| -> Result<usize, Response> {
            let size = w.regions[r].get(&c).ok_or_else(|| not_found(&c))?.size;
            let parsed: Result<Vec<_>, String> = points.iter().map(|p| parse_point(p, size)).collect();
            let parsed = parsed.map_err(|e| err(400, &e))?;
            let now = w.now_us();
            let n = parsed.len();
            for (id, vector, payload) in parsed {
                let (p, value) = w.put(&id, vector, payload);
                w.regions[r].get_mut(&c).expect("checked above").store.upsert(now, p, value);
            }
            Ok(n)
        })
        .await;
    match res {
        Ok(_) => ok(json!({ "operation_id": ctx.shared.next_id(), "status": "completed" })),
        Err(r) => r,
    }
}

async fn retrieve(State(ctx): State<Ctx>, Path(c): Path<String>, Json(body): Json<Value>) -> Response {
    let ids = body["ids"].as_array().cloned().unwrap_or_default();
    let with_vector = body["with_vector"].as_bool().unwrap_or(false);
    let r = region(ctx.fake);
    let res = ctx
        .shared
        .vector
        .call(move |w| {
            let col = w.regions[r].get(&c)?;
            let found = ids
                .iter()
                .filter_map(|id| w.ids.get(&id.to_string()))
                .filter_map(|&p| col.store.query(p).map(|h| w.record(p, h.value, with_vector)))
                .collect::<Vec<_>>();
            Some(found)
        })
        .await;
    res.map_or_else(|| not_found("requested"), |v| ok(json!(v)))
}

fn score(distance: &str, a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    match distance {
        "Dot" => dot,
        "Euclid" => a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f32>().sqrt(),
        _ => {
            let n = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt().max(f32::MIN_POSITIVE);
            dot / (n(a) * n(b))
        }
    }
}

/// Nearest points to `vector`, best first.
async fn nearest(
    ctx: &Ctx,
    c: String,
    vector: Vec<f32>,
    limit: usize,
    with_vector: bool,
) -> Result<Vec<Value>, Response> {
    let r = region(ctx.fake);
    ctx.shared
        .vector
        .call(move |w| {
            let col = w.regions[r].get(&c).ok_or_else(|| not_found(&c))?;
            if vector.len() != col.size {
                return Err(err(
                    400,
                    &format!("Wrong input: Vector dimension error: expected dim: {}, got {}", col.size, vector.len()),
                ));
            }
            let mut hits: Vec<(f32, PointId, u64)> = col
                .store
                .points_iter()
                .map(|(p, s)| (score(&col.distance, &vector, &w.contents[&s.value].vector), p, s.value))
                .collect();
            let euclid = col.distance == "Euclid";
            hits.sort_by(|a, b| if euclid { a.0.total_cmp(&b.0) } else { b.0.total_cmp(&a.0) }.then(a.1.cmp(&b.1)));
            Ok(hits
                .into_iter()
                .take(limit.min(MAX_LIMIT))
                .map(|(s, p, v)| {
                    let mut rec = w.record(p, v, with_vector);
                    rec["score"] = json!(s);
                    rec
                })
                .collect())
        })
        .await
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().map(|a| a.iter().filter_map(Value::as_f64).map(|x| x as f32).collect()).unwrap_or_default()
}

async fn query(State(ctx): State<Ctx>, Path(c): Path<String>, Json(body): Json<Value>) -> Response {
    let q = &body["query"];
    let vector = if q.is_array() { floats(q) } else { floats(&q["nearest"]) };
    let limit = body["limit"].as_u64().unwrap_or(10) as usize;
    let with_vector = body["with_vector"].as_bool().unwrap_or(false);
    match nearest(&ctx, c, vector, limit, with_vector).await {
        Ok(points) => ok(json!({ "points": points })),
        Err(r) => r,
    }
}

async fn search(State(ctx): State<Ctx>, Path(c): Path<String>, Json(body): Json<Value>) -> Response {
    let limit = body["limit"].as_u64().unwrap_or(10) as usize;
    let with_vector = body["with_vector"].as_bool().unwrap_or(false);
    match nearest(&ctx, c, floats(&body["vector"]), limit, with_vector).await {
        Ok(points) => ok(json!(points)),
        Err(r) => r,
    }
}

async fn count(State(ctx): State<Ctx>, Path(c): Path<String>) -> Response {
    let r = region(ctx.fake);
    let n = ctx.shared.vector.call(move |w| w.regions[r].get(&c).map(|col| col.store.len())).await;
    n.map_or_else(|| not_found("requested"), |n| ok(json!({ "count": n })))
}

async fn create_snapshot(State(ctx): State<Ctx>, Path(c): Path<String>) -> Response {
    let r = region(ctx.fake);
    let res = ctx
        .shared
        .vector
        .call(move |w| {
            let now = w.now_us();
            let snap = w.regions[r].get_mut(&c)?.store.snapshot(now);
            Some(w.describe(&w.regions[r][&c], &snap))
        })
        .await;
    res.map_or_else(|| not_found("requested"), ok)
}

async fn list_snapshots(State(ctx): State<Ctx>, Path(c): Path<String>) -> Response {
    let r = region(ctx.fake);
    let res = ctx
        .shared
        .vector
        .call(move |w| {
            let col = w.regions[r].get(&c)?;
            Some(col.store.snapshots().iter().map(|s| w.describe(col, s)).collect::<Vec<_>>())
        })
        .await;
    res.map_or_else(|| not_found("requested"), |v| ok(json!(v)))
}

async fn download_snapshot(State(ctx): State<Ctx>, Path((c, name)): Path<(String, String)>) -> Response {
    let r = region(ctx.fake);
    let res = ctx
        .shared
        .vector
        .call(move |w| {
            let col = w.regions[r].get(&c)?;
            Some(w.snapshot_file(col, col.store.find_snapshot(&name)?))
        })
        .await;
    match res {
        Some(v) => {
            let mut resp = json_response(200, &v);
            resp.headers_mut().insert("content-type", axum::http::HeaderValue::from_static("application/octet-stream"));
            resp
        }
        None => err(404, "Not found: snapshot (or its collection) doesn't exist"),
    }
}

async fn delete_snapshot(State(ctx): State<Ctx>, Path((c, name)): Path<(String, String)>) -> Response {
    let r = region(ctx.fake);
    let n = ctx.shared.vector.call(move |w| w.regions[r].get_mut(&c).map(|col| col.store.delete_snapshot(&name))).await;
    match n {
        Some(0) => err(404, "Not found: snapshot doesn't exist"),
        Some(_) => ok(json!(true)),
        None => not_found("requested"),
    }
}

/// `http://127.0.0.1:<port>/collections/<c>/snapshots/<name>` → (port, c, name).
fn parse_location(loc: &str) -> Option<(u16, String, String)> {
    let rest = loc.strip_prefix("http://")?;
    let (host, path) = rest.split_once('/')?;
    let port = host.rsplit_once(':')?.1.parse().ok()?;
    let mut parts = path.split('/');
    let (Some("collections"), Some(c), Some("snapshots"), Some(name), None) =
        (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    Some((port, c.to_owned(), name.to_owned()))
}

async fn recover(State(ctx): State<Ctx>, Path(c): Path<String>, Json(body): Json<Value>) -> Response {
    let loc = body["location"].as_str().unwrap_or("").to_owned();
    if let Some(path) = loc.strip_prefix("file://") {
        return recover_from_file(&ctx, c, std::path::PathBuf::from(path)).await;
    }
    let src = parse_location(&loc).and_then(|(port, sc, name)| Some((ctx.shared.fake_on_port(port)?, sc, name)));
    let Some((src_fake, sc, name)) = src.filter(|(f, _, _)| matches!(f, Fake::VectorA | Fake::VectorB)) else {
        return err(
            400,
            &format!(
                "Wrong input: location `{loc}` is neither a snapshot of this instance nor a file; use http://127.0.0.1:<vector port>/collections/<c>/snapshots/<name> or file:///<path of a downloaded snapshot>"
            ),
        );
    };
    let (from, to) = (region(src_fake), region(ctx.fake));
    let done = ctx
        .shared
        .vector
        .call(move |w| {
            let src = w.regions[from].get(&sc)?;
            let snap = src.store.find_snapshot(&name)?.clone();
            let (size, distance) = (src.size, src.distance.clone());
            let now = w.now_us();
            let col = w.regions[to].entry(c).or_insert_with(|| Collection {
                size,
                distance,
                store: VectorStore::new(VectorConfig::default()),
            });
            col.store.receive_snapshot(snap.clone());
            Some(col.store.restore(now, &snap))
        })
        .await;
    match done {
        Some(_) => ok(json!(true)),
        None => err(404, &format!("Not found: snapshot at `{loc}` doesn't exist")),
    }
}

/// Restores collection `c` from the snapshot file `bytes` (`what` names it in errors).
async fn restore_bytes(ctx: &Ctx, c: String, bytes: &[u8], what: String) -> Response {
    let bad = |why: &str| {
        err(
            400,
            &format!(
                "Wrong input: snapshot file {what}: {why}; give a file downloaded from GET /collections/<c>/snapshots/<name>"
            ),
        )
    };
    let file: Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(e) => return bad(&format!("not JSON ({e})")),
    };
    let r = region(ctx.fake);
    match ctx.shared.vector.call(move |w| w.restore_file(r, c, &file)).await {
        Ok(_) => ok(json!(true)),
        Err(why) => bad(&why),
    }
}

/// `PUT …/snapshots/recover` with `file:///…`: a snapshot file on this machine.
async fn recover_from_file(ctx: &Ctx, c: String, path: std::path::PathBuf) -> Response {
    let what = format!("`{}`", path.display());
    let read = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
        let len = std::fs::metadata(&path)?.len();
        if len > MAX_SNAPSHOT_BYTES as u64 {
            return Err(std::io::Error::other(format!("{len} bytes, over the limit of {MAX_SNAPSHOT_BYTES}")));
        }
        std::fs::read(&path)
    })
    .await
    .expect("the read does not panic");
    match read {
        Ok(bytes) => restore_bytes(ctx, c, &bytes, what).await,
        Err(e) => err(
            400,
            &format!(
                "Wrong input: cannot read snapshot file {what}: {e}; give the absolute path of a downloaded snapshot"
            ),
        ),
    }
}

/// `POST …/snapshots/upload`: a multipart form whose `snapshot` part is a
/// snapshot file (as `qdrant-client` and `curl -F snapshot=@file` send it).
async fn upload_snapshot(State(ctx): State<Ctx>, Path(c): Path<String>, mut form: Multipart) -> Response {
    loop {
        let field = match form.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => {
                return err(400, "Wrong input: no `snapshot` part in the multipart form; send -F snapshot=@<file>");
            }
            Err(e) => return err(400, &format!("Wrong input: bad multipart body: {e}")),
        };
        if field.name() != Some("snapshot") {
            continue;
        }
        let what = format!("`{}`", field.file_name().unwrap_or("snapshot"));
        return match field.bytes().await {
            Ok(bytes) => restore_bytes(&ctx, c, &bytes, what).await,
            Err(e) => err(400, &format!("Wrong input: cannot read the `snapshot` part: {e}")),
        };
    }
}
