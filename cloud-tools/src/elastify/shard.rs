//! Sharded stage 1: which new branches shard I of N trains, where I comes
//! from (the flag, or a batch engine's variables), and the shard file a
//! shard writes its trained branches to. The assemble step reads the shard
//! files of a folder back, checks them against its own run (oracle, stage-1
//! spec, data, seed, version) and against each other (one file per shard
//! index, every new branch exactly once), and only then runs stage 2.
//!
//! Stage 1 trains each branch on its own optimiser over the same batch
//! sequence (a function of the seed and the step, not of the other
//! branches), so a branch's weights do not depend on which process trains
//! it or which branches it trains with.
//!
//! Shard file, version 1: `ADNSHRD\n`, the format version (u32 LE), the
//! header length (u32 LE), the header (JSON: the [`RunKey`], I/N, and per
//! branch its id, loss and tensor names and shapes), the tensors (f32 LE,
//! in header order) and the sha256 (lowercase hex, 64 bytes) of everything
//! before it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use adaptivenet_onnx::bundle::BranchId;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The first bytes of a shard file.
pub const MAGIC: &[u8; 8] = b"ADNSHRD\n";
/// The shard file format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// The extension of shard files (`stage1-I-of-N.shard`).
pub const EXTENSION: &str = "shard";

/// Kubernetes Indexed Jobs: the pod's completion index, 0-based.
pub const K8S_INDEX_VAR: &str = "JOB_COMPLETION_INDEX";
/// Slurm job arrays: this task's id, its array's first id and step.
pub const SLURM_ID_VAR: &str = "SLURM_ARRAY_TASK_ID";
pub const SLURM_MIN_VAR: &str = "SLURM_ARRAY_TASK_MIN";
pub const SLURM_STEP_VAR: &str = "SLURM_ARRAY_TASK_STEP";
pub const SLURM_COUNT_VAR: &str = "SLURM_ARRAY_TASK_COUNT";

/// Errors of sharding: the shard argument, the batch-engine variables, and
/// reading, writing and checking shard files.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error("--stage1-shard `{arg}`: {problem}")]
    BadArg { arg: String, problem: String },
    #[error("{var}=`{value}`: {problem}")]
    BadVar {
        var: &'static str,
        value: String,
        problem: String,
    },
    #[error(
        "--stage1-shard auto/{count}: neither {K8S_INDEX_VAR} (Kubernetes Indexed Job) nor \
         {SLURM_ID_VAR} (Slurm array) is set; give the index as I/{count}"
    )]
    NoIndexVar { count: usize },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {problem}", path.display())]
    File { path: PathBuf, problem: FileProblem },
    #[error("writing the shard file: {0}")]
    Write(#[from] adaptivenet_onnx::Error),
    #[error("encoding a shard header or spec key: {0}")]
    Encode(serde_json::Error),
    #[error("{}: {problem}", dir.display())]
    Set { dir: PathBuf, problem: SetProblem },
}

/// What is wrong with one shard file.
#[derive(Debug, thiserror::Error)]
pub enum FileProblem {
    #[error("not an adaptivenet stage-1 shard file (no `ADNSHRD` mark)")]
    NotAShard,
    #[error("shard file format version {found}; this adaptivenet reads version {FORMAT_VERSION}")]
    Version { found: u32 },
    #[error("the file is truncated or damaged (checksum mismatch)")]
    Checksum,
    #[error("bad header: {0}")]
    Header(String),
    #[error("was trained {what} {theirs}, but this run has {ours}")]
    Mismatch {
        what: &'static str,
        theirs: String,
        ours: String,
    },
    #[error("holds branch `{0}`, which this supernet does not have")]
    UnknownBranch(String),
    #[error("branch `{branch}`: {problem}")]
    BadBranch { branch: String, problem: String },
}

/// What is wrong with the set of shard files in a folder.
#[derive(Debug, thiserror::Error)]
pub enum SetProblem {
    #[error("no shard files (*.{EXTENSION})")]
    Empty,
    #[error("{first} is shard {index}/{count} and so is {second}")]
    DuplicateShard {
        first: String,
        second: String,
        index: usize,
        count: usize,
    },
    #[error("{file} is one of {theirs} shards, {other} one of {ours}: the files are from different runs")]
    CountMismatch {
        file: String,
        theirs: usize,
        other: String,
        ours: usize,
    },
    #[error("shard {index}/{count} is missing (no file holds it)")]
    MissingShard { index: usize, count: usize },
    #[error("branch `{branch}` is in both {first} and {second}")]
    DuplicateBranch {
        branch: String,
        first: String,
        second: String,
    },
    #[error("branch `{0}` is in no shard file")]
    MissingBranch(String),
}

/// Shard `index` (0-based) of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardIndex {
    pub index: usize,
    pub count: usize,
}

impl std::fmt::Display for ShardIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl ShardIndex {
    /// The file this shard writes in `dir`.
    pub fn file_in(&self, dir: &Path) -> PathBuf {
        dir.join(format!(
            "stage1-{}-of-{}.{EXTENSION}",
            self.index, self.count
        ))
    }
}

/// `--stage1-shard`: `I/N` (0-based I), or `auto/N` to take I from the
/// batch engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardArg {
    Fixed(ShardIndex),
    Auto { count: usize },
}

impl FromStr for ShardArg {
    type Err = ShardError;
    fn from_str(s: &str) -> Result<ShardArg, ShardError> {
        let bad = |problem: &str| ShardError::BadArg {
            arg: s.to_string(),
            problem: problem.to_string(),
        };
        let (i, n) = s
            .split_once('/')
            .ok_or_else(|| bad("expected I/N (0-based I) or auto/N"))?;
        let count: usize = n
            .trim()
            .parse()
            .map_err(|_| bad("N is not a whole number"))?;
        if count == 0 {
            return Err(bad("N must be at least 1"));
        }
        let i = i.trim();
        if i == "auto" {
            return Ok(ShardArg::Auto { count });
        }
        let index: usize = i
            .parse()
            .map_err(|_| bad("I is neither a whole number nor `auto`"))?;
        if index >= count {
            return Err(bad("I must be below N (shards are numbered from 0)"));
        }
        Ok(ShardArg::Fixed(ShardIndex { index, count }))
    }
}

impl ShardArg {
    /// The shard this process is. `auto/N` reads, in this order,
    /// `JOB_COMPLETION_INDEX` (0-based), then `SLURM_ARRAY_TASK_ID` counted
    /// from `SLURM_ARRAY_TASK_MIN` in steps of `SLURM_ARRAY_TASK_STEP`
    /// (when those are set); `var` looks a variable up (the process
    /// environment in the CLI).
    pub fn resolve(&self, var: &dyn Fn(&str) -> Option<String>) -> Result<ShardIndex, ShardError> {
        let count = match *self {
            ShardArg::Fixed(s) => return Ok(s),
            ShardArg::Auto { count } => count,
        };
        let number = |name: &'static str, value: &str| -> Result<usize, ShardError> {
            value.trim().parse().map_err(|_| ShardError::BadVar {
                var: name,
                value: value.to_string(),
                problem: "not a whole number".into(),
            })
        };
        let check = |name: &'static str, value: &str, index: usize| {
            if index < count {
                Ok(ShardIndex { index, count })
            } else {
                Err(ShardError::BadVar {
                    var: name,
                    value: value.to_string(),
                    problem: format!(
                        "gives shard {index}, but --stage1-shard auto/{count} has shards 0 to {}",
                        count - 1
                    ),
                })
            }
        };
        if let Some(v) = var(K8S_INDEX_VAR) {
            let index = number(K8S_INDEX_VAR, &v)?;
            return check(K8S_INDEX_VAR, &v, index);
        }
        if let Some(v) = var(SLURM_ID_VAR) {
            let id = number(SLURM_ID_VAR, &v)?;
            let min = match var(SLURM_MIN_VAR) {
                Some(m) => number(SLURM_MIN_VAR, &m)?,
                None => 0,
            };
            let step = match var(SLURM_STEP_VAR) {
                Some(s) => number(SLURM_STEP_VAR, &s)?.max(1),
                None => 1,
            };
            if let Some(c) = var(SLURM_COUNT_VAR) {
                if number(SLURM_COUNT_VAR, &c)? != count {
                    return Err(ShardError::BadVar {
                        var: SLURM_COUNT_VAR,
                        value: c,
                        problem: format!(
                            "the array has that many tasks, but --stage1-shard says auto/{count}"
                        ),
                    });
                }
            }
            if id < min || (id - min) % step != 0 {
                return Err(ShardError::BadVar {
                    var: SLURM_ID_VAR,
                    value: v,
                    problem: format!("not in the array {min}, {min}+{step}, ..."),
                });
            }
            return check(SLURM_ID_VAR, &v, (id - min) / step);
        }
        Err(ShardError::NoIndexVar { count })
    }
}

/// Which of `costs` (one per new branch, in manifest order) shard `shard`
/// trains: the most expensive first, each to the least loaded shard (ties
/// to the lower index), so every process computes the same split.
pub fn assign(costs: &[u64], shard: ShardIndex) -> Vec<usize> {
    let mut order: Vec<usize> = (0..costs.len()).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(costs[i]), i));
    let mut load = vec![0u64; shard.count.max(1)];
    let mut mine = Vec::new();
    for i in order {
        let s = (0..load.len()).min_by_key(|&s| (load[s], s)).unwrap_or(0);
        load[s] = load[s].saturating_add(costs[i]);
        if s == shard.index {
            mine.push(i);
        }
    }
    mine.sort_unstable();
    mine
}

/// What a shard file says about the run that made it; the assemble step
/// must match every field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunKey {
    /// `adaptivenet` version that trained it.
    pub tool_version: String,
    /// sha256 of the oracle file.
    pub oracle_sha256: String,
    /// sha256 of what decides stage 1 in the spec (see [`stage1_spec_sha256`]).
    pub spec_sha256: String,
    /// sha256 of the loaded training data (see [`data_sha256`]).
    pub data_sha256: String,
    pub seed: u64,
}

/// One tensor of a shard file: an initializer of a branch.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedTensor {
    pub name: String,
    pub dims: Vec<usize>,
    pub data: Vec<f32>,
}

/// One trained branch: its initializers and its held-out distillation loss
/// (none when stage 1 was skipped, `samples: 0`).
#[derive(Debug, Clone, PartialEq)]
pub struct ShardBranch {
    pub id: BranchId,
    pub distill_loss: Option<f64>,
    pub tensors: Vec<NamedTensor>,
}

/// The content of a shard file.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardFile {
    pub key: RunKey,
    pub shard: ShardIndex,
    pub branches: Vec<ShardBranch>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    #[serde(flatten)]
    key: RunKey,
    shard: ShardIndex,
    branches: Vec<HeaderBranch>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderBranch {
    id: String,
    /// The loss for people reading the header.
    distill_loss: Option<f64>,
    /// The loss exactly (`f64::to_bits`): it goes into the manifest.
    distill_loss_bits: Option<u64>,
    tensors: Vec<HeaderTensor>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderTensor {
    name: String,
    dims: Vec<usize>,
}

impl ShardFile {
    /// The file's bytes.
    pub fn encode(&self) -> Result<Vec<u8>, ShardError> {
        let header = Header {
            key: self.key.clone(),
            shard: self.shard,
            branches: self
                .branches
                .iter()
                .map(|b| HeaderBranch {
                    id: b.id.to_string(),
                    distill_loss: b.distill_loss,
                    distill_loss_bits: b.distill_loss.map(f64::to_bits),
                    tensors: b
                        .tensors
                        .iter()
                        .map(|t| HeaderTensor {
                            name: t.name.clone(),
                            dims: t.dims.clone(),
                        })
                        .collect(),
                })
                .collect(),
        };
        let json = serde_json::to_vec(&header).map_err(ShardError::Encode)?;
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&(json.len() as u32).to_le_bytes());
        out.extend_from_slice(&json);
        for t in self.branches.iter().flat_map(|b| &b.tensors) {
            for x in &t.data {
                out.extend_from_slice(&x.to_le_bytes());
            }
        }
        let sum = adaptivenet_onnx::bundle::sha256_hex(&out);
        out.extend_from_slice(sum.as_bytes());
        Ok(out)
    }

    /// Parse and check the bytes of the shard file `path`.
    pub fn decode(bytes: &[u8], path: &Path) -> Result<ShardFile, ShardError> {
        let fail = |problem: FileProblem| ShardError::File {
            path: path.to_path_buf(),
            problem,
        };
        if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
            return Err(fail(FileProblem::NotAShard));
        }
        let u32_at = |at: usize| -> Option<u32> {
            let b = bytes.get(at..at + 4)?;
            Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        };
        let version = u32_at(8).ok_or_else(|| fail(FileProblem::Checksum))?;
        if version != FORMAT_VERSION {
            return Err(fail(FileProblem::Version { found: version }));
        }
        if bytes.len() < 16 + 64 {
            return Err(fail(FileProblem::Checksum));
        }
        let (body, sum) = bytes.split_at(bytes.len() - 64);
        if adaptivenet_onnx::bundle::sha256_hex(body).as_bytes() != sum {
            return Err(fail(FileProblem::Checksum));
        }
        let header_len = u32_at(12).ok_or_else(|| fail(FileProblem::Checksum))? as usize;
        let json = body
            .get(16..16 + header_len)
            .ok_or_else(|| fail(FileProblem::Header("longer than the file".into())))?;
        let header: Header =
            serde_json::from_slice(json).map_err(|e| fail(FileProblem::Header(e.to_string())))?;
        if header.shard.count == 0 || header.shard.index >= header.shard.count {
            return Err(fail(FileProblem::Header(format!(
                "shard {} is not one of 0..{}",
                header.shard.index, header.shard.count
            ))));
        }
        let mut payload = &body[16 + header_len..];
        let mut branches = Vec::with_capacity(header.branches.len());
        for hb in header.branches {
            let id: BranchId = hb
                .id
                .parse()
                .map_err(|e| fail(FileProblem::Header(format!("branch id `{}`: {e}", hb.id))))?;
            let mut tensors = Vec::with_capacity(hb.tensors.len());
            for ht in hb.tensors {
                let n = ht
                    .dims
                    .iter()
                    .try_fold(1usize, |a, &d| a.checked_mul(d))
                    .and_then(|n| n.checked_mul(4).map(|b| (n, b)));
                let Some((n, nbytes)) = n.filter(|&(_, b)| b <= payload.len()) else {
                    return Err(fail(FileProblem::Header(format!(
                        "tensor `{}` {:?} runs past the end of the data",
                        ht.name, ht.dims
                    ))));
                };
                let (raw, rest) = payload.split_at(nbytes);
                payload = rest;
                let data = raw
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect::<Vec<_>>();
                debug_assert_eq!(data.len(), n);
                tensors.push(NamedTensor {
                    name: ht.name,
                    dims: ht.dims,
                    data,
                });
            }
            branches.push(ShardBranch {
                id,
                distill_loss: hb.distill_loss_bits.map(f64::from_bits),
                tensors,
            });
        }
        if !payload.is_empty() {
            return Err(fail(FileProblem::Header(format!(
                "{} bytes of tensor data that no tensor names",
                payload.len()
            ))));
        }
        Ok(ShardFile {
            key: header.key,
            shard: header.shard,
            branches,
        })
    }

    /// Write the file to `path` atomically (a reader never sees half of it).
    pub fn write(&self, path: &Path) -> Result<(), ShardError> {
        Ok(adaptivenet_onnx::write_atomically(path, &self.encode()?)?)
    }

    /// Read and check the shard file `path`.
    pub fn read(path: &Path) -> Result<ShardFile, ShardError> {
        let bytes = std::fs::read(path).map_err(|source| ShardError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        ShardFile::decode(&bytes, path)
    }
}

/// The branches the assemble step expects: each new branch's id and its
/// initializers (name and dims).
pub type Expected = BTreeMap<String, BTreeMap<String, Vec<usize>>>;

/// Read every shard file in `dir` and check them against `key` (this
/// run), `expected` and each other. Returns the branches by id, each with
/// the file it came from; nothing is returned unless every check passes.
pub fn read_all(
    dir: &Path,
    key: &RunKey,
    expected: &Expected,
) -> Result<BTreeMap<String, (PathBuf, ShardBranch)>, ShardError> {
    let set = |problem: SetProblem| ShardError::Set {
        dir: dir.to_path_buf(),
        problem,
    };
    let entries = std::fs::read_dir(dir).map_err(|source| ShardError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut paths = Vec::new();
    for e in entries {
        let e = e.map_err(|source| ShardError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let name = e.file_name().to_string_lossy().into_owned();
        // `.NAME.tmp-...` are another writer's unfinished files
        if !name.starts_with('.') && name.ends_with(&format!(".{EXTENSION}")) {
            paths.push(e.path());
        }
    }
    paths.sort();
    if paths.is_empty() {
        return Err(set(SetProblem::Empty));
    }
    let mut by_index: BTreeMap<usize, PathBuf> = BTreeMap::new();
    let mut count: Option<(usize, PathBuf)> = None;
    let mut out: BTreeMap<String, (PathBuf, ShardBranch)> = BTreeMap::new();
    for path in paths {
        let file = ShardFile::read(&path)?;
        let fail = |problem: FileProblem| ShardError::File {
            path: path.clone(),
            problem,
        };
        check_key(&file.key, key).map_err(fail)?;
        match &count {
            None => count = Some((file.shard.count, path.clone())),
            Some((n, other)) if *n != file.shard.count => {
                return Err(set(SetProblem::CountMismatch {
                    file: path.display().to_string(),
                    theirs: file.shard.count,
                    other: other.display().to_string(),
                    ours: *n,
                }))
            }
            Some(_) => {}
        }
        if let Some(first) = by_index.insert(file.shard.index, path.clone()) {
            return Err(set(SetProblem::DuplicateShard {
                first: first.display().to_string(),
                second: path.display().to_string(),
                index: file.shard.index,
                count: file.shard.count,
            }));
        }
        for b in file.branches {
            let id = b.id.to_string();
            let Some(want) = expected.get(&id) else {
                return Err(fail(FileProblem::UnknownBranch(id)));
            };
            let have: BTreeMap<String, Vec<usize>> = b
                .tensors
                .iter()
                .map(|t| (t.name.clone(), t.dims.clone()))
                .collect();
            if have.len() != b.tensors.len() || &have != want {
                return Err(fail(FileProblem::BadBranch {
                    branch: id,
                    problem: describe_tensor_difference(&have, want),
                }));
            }
            if let Some((first, _)) = out.get(&id) {
                return Err(set(SetProblem::DuplicateBranch {
                    branch: id,
                    first: first.display().to_string(),
                    second: path.display().to_string(),
                }));
            }
            out.insert(id, (path.clone(), b));
        }
    }
    let count = count.map(|(n, _)| n).unwrap_or(0);
    if let Some(index) = (0..count).find(|i| !by_index.contains_key(i)) {
        return Err(set(SetProblem::MissingShard { index, count }));
    }
    if let Some(id) = expected.keys().find(|id| !out.contains_key(*id)) {
        return Err(set(SetProblem::MissingBranch(id.clone())));
    }
    Ok(out)
}

fn check_key(theirs: &RunKey, ours: &RunKey) -> Result<(), FileProblem> {
    let short = |s: &str| s.chars().take(12).collect::<String>();
    let mismatch = |what, t: String, o: String| FileProblem::Mismatch {
        what,
        theirs: t,
        ours: o,
    };
    if theirs.seed != ours.seed {
        return Err(mismatch(
            "with seed",
            theirs.seed.to_string(),
            format!("seed {}", ours.seed),
        ));
    }
    if theirs.oracle_sha256 != ours.oracle_sha256 {
        return Err(mismatch(
            "on the oracle with sha256",
            short(&theirs.oracle_sha256),
            format!("an oracle with sha256 {}", short(&ours.oracle_sha256)),
        ));
    }
    if theirs.data_sha256 != ours.data_sha256 {
        return Err(mismatch(
            "on data with sha256",
            short(&theirs.data_sha256),
            format!("data with sha256 {}", short(&ours.data_sha256)),
        ));
    }
    if theirs.spec_sha256 != ours.spec_sha256 {
        return Err(mismatch(
            "with a stage-1 spec (branches, batch, holdout, stage1, normalisation, cuts) of sha256",
            short(&theirs.spec_sha256),
            format!("one of sha256 {}", short(&ours.spec_sha256)),
        ));
    }
    if theirs.tool_version != ours.tool_version {
        return Err(mismatch(
            "by adaptivenet",
            theirs.tool_version.clone(),
            format!("adaptivenet {}", ours.tool_version),
        ));
    }
    Ok(())
}

fn describe_tensor_difference(
    have: &BTreeMap<String, Vec<usize>>,
    want: &BTreeMap<String, Vec<usize>>,
) -> String {
    if let Some(n) = want.keys().find(|n| !have.contains_key(*n)) {
        return format!("initializer `{n}` is missing");
    }
    if let Some(n) = have.keys().find(|n| !want.contains_key(*n)) {
        return format!("initializer `{n}` is not one of the branch's");
    }
    if let Some((n, d)) = have.iter().find(|(n, d)| want.get(*n) != Some(d)) {
        return format!(
            "initializer `{n}` has dims {d:?}, the branch's has {:?}",
            want.get(n).cloned().unwrap_or_default()
        );
    }
    "an initializer is listed twice".into()
}

/// sha256 of the training data as loaded (shape, values, labels), hashed
/// in chunks rather than copied whole.
pub fn data_sha256(data: &adaptivenet_onnx::dataset::Dataset) -> String {
    {
        let mut h = Sha256::new();
        h.update((data.item_shape.len() as u64).to_le_bytes());
        for d in &data.item_shape {
            h.update((*d as u64).to_le_bytes());
        }
        for chunk in data.data.chunks(1 << 16) {
            let bytes: Vec<u8> = chunk.iter().flat_map(|x| x.to_le_bytes()).collect();
            h.update(&bytes);
        }
        match &data.labels {
            Some(l) => {
                h.update([1u8]);
                for chunk in l.chunks(1 << 16) {
                    let bytes: Vec<u8> = chunk.iter().flat_map(|x| x.to_le_bytes()).collect();
                    h.update(&bytes);
                }
            }
            None => h.update([0u8]),
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// sha256 of the parts of the spec that decide stage 1's weights: the
/// branches, the training seed, batch size and holdout, the stage-1
/// settings, the input normalisation, and `--cuts`. Stage-2 settings, the
/// model's name, version and labels are left out, so stage 2 can be re-run
/// on the same shard files with other settings.
pub fn stage1_spec_sha256(
    spec: &super::ElastifySpec,
    cuts: Option<&[String]>,
) -> Result<String, ShardError> {
    #[derive(Serialize)]
    struct Stage1Key<'a> {
        branches: &'a adaptivenet_onnx::supernet::BranchSpec,
        seed: u64,
        batch_size: usize,
        holdout: usize,
        stage1: &'a super::spec::Stage1Spec,
        mean: &'a [f32],
        std: &'a [f32],
        cuts: Option<&'a [String]>,
    }
    let key = Stage1Key {
        branches: &spec.branches,
        seed: spec.training.seed,
        batch_size: spec.training.batch_size,
        holdout: spec.training.holdout,
        stage1: &spec.training.stage1,
        mean: &spec.model.mean,
        std: &spec.model.std,
        cuts,
    };
    let json = serde_json::to_vec(&key).map_err(ShardError::Encode)?;
    Ok(adaptivenet_onnx::bundle::sha256_hex(&json))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    fn auto(n: usize) -> ShardArg {
        ShardArg::Auto { count: n }
    }

    #[test]
    fn the_argument_parses_and_checks_its_range() {
        assert_eq!(
            "2/3".parse::<ShardArg>().unwrap(),
            ShardArg::Fixed(ShardIndex { index: 2, count: 3 })
        );
        assert_eq!("auto/4".parse::<ShardArg>().unwrap(), auto(4));
        for (bad, needle) in [
            ("3/3", "below N"),
            ("1", "I/N"),
            ("x/3", "`auto`"),
            ("0/0", "at least 1"),
            ("auto/n", "whole number"),
        ] {
            let e = bad.parse::<ShardArg>().unwrap_err().to_string();
            assert!(e.contains(needle) && e.contains(bad), "{bad}: {e}");
        }
    }

    #[test]
    fn the_index_comes_from_the_flag_then_kubernetes_then_slurm() {
        let fixed = ShardArg::Fixed(ShardIndex { index: 1, count: 3 });
        // the flag wins over any variable
        assert_eq!(
            fixed.resolve(&env(&[(K8S_INDEX_VAR, "2")])).unwrap().index,
            1
        );
        assert_eq!(
            auto(3).resolve(&env(&[(K8S_INDEX_VAR, "2")])).unwrap(),
            ShardIndex { index: 2, count: 3 }
        );
        // Kubernetes before Slurm
        let both = env(&[(K8S_INDEX_VAR, "0"), (SLURM_ID_VAR, "2")]);
        assert_eq!(auto(3).resolve(&both).unwrap().index, 0);
        // Slurm ids count from the array's first id, in its steps
        let slurm = env(&[(SLURM_ID_VAR, "7"), (SLURM_MIN_VAR, "5")]);
        assert_eq!(auto(3).resolve(&slurm).unwrap().index, 2);
        let stepped = env(&[
            (SLURM_ID_VAR, "14"),
            (SLURM_MIN_VAR, "10"),
            (SLURM_STEP_VAR, "2"),
            (SLURM_COUNT_VAR, "3"),
        ]);
        assert_eq!(auto(3).resolve(&stepped).unwrap().index, 2);
        assert_eq!(
            auto(3).resolve(&env(&[(SLURM_ID_VAR, "1")])).unwrap().index,
            1
        );
    }

    #[test]
    fn bad_or_missing_variables_are_refused_by_name() {
        let cases: [(&[(&str, &str)], &str); 6] = [
            (&[], "neither JOB_COMPLETION_INDEX"),
            (
                &[(K8S_INDEX_VAR, "3")],
                "JOB_COMPLETION_INDEX=`3`: gives shard 3",
            ),
            (
                &[(K8S_INDEX_VAR, "-1")],
                "JOB_COMPLETION_INDEX=`-1`: not a whole",
            ),
            (
                &[(SLURM_ID_VAR, "4"), (SLURM_MIN_VAR, "1")],
                "SLURM_ARRAY_TASK_ID=`4`: gives shard 3",
            ),
            (
                &[(SLURM_ID_VAR, "0"), (SLURM_MIN_VAR, "1")],
                "SLURM_ARRAY_TASK_ID=`0`: not in the array",
            ),
            (
                &[(SLURM_ID_VAR, "0"), (SLURM_COUNT_VAR, "4")],
                "SLURM_ARRAY_TASK_COUNT=`4`",
            ),
        ];
        for (vars, needle) in cases {
            let e = auto(3).resolve(&env(vars)).unwrap_err().to_string();
            assert!(e.contains(needle), "{vars:?}: {e}");
        }
    }

    #[test]
    fn assignment_covers_every_branch_once_and_balances_cost() {
        let costs = [5, 1, 9, 3, 3, 7, 2];
        let n = 3;
        let parts: Vec<Vec<usize>> = (0..n)
            .map(|index| assign(&costs, ShardIndex { index, count: n }))
            .collect();
        let mut all: Vec<usize> = parts.concat();
        all.sort_unstable();
        assert_eq!(all, (0..costs.len()).collect::<Vec<_>>());
        let loads: Vec<u64> = parts
            .iter()
            .map(|p| p.iter().map(|&i| costs[i]).sum())
            .collect();
        assert_eq!(loads.iter().sum::<u64>(), 30);
        assert!(loads.iter().all(|&l| (9..=11).contains(&l)), "{loads:?}");
        // more shards than branches: the extra shards train nothing
        assert!(assign(&[1], ShardIndex { index: 2, count: 3 }).is_empty());
    }

    fn sample() -> ShardFile {
        ShardFile {
            key: RunKey {
                tool_version: "0.1.0".into(),
                oracle_sha256: "a".repeat(64),
                spec_sha256: "b".repeat(64),
                data_sha256: "c".repeat(64),
                seed: 3,
            },
            shard: ShardIndex { index: 1, count: 2 },
            branches: vec![ShardBranch {
                id: "m0x2".parse().unwrap(),
                distill_loss: Some(0.1 + 0.2),
                tensors: vec![
                    NamedTensor {
                        name: "w".into(),
                        dims: vec![2, 2],
                        data: vec![1.0, -0.0, f32::MIN_POSITIVE, 3.5],
                    },
                    NamedTensor {
                        name: "b".into(),
                        dims: vec![1],
                        data: vec![7.0],
                    },
                ],
            }],
        }
    }

    #[test]
    fn a_shard_file_round_trips_bit_for_bit() {
        let mut f = sample();
        let bytes = f.encode().unwrap();
        let back = ShardFile::decode(&bytes, Path::new("x.shard")).unwrap();
        assert_eq!(back, f);
        assert_eq!(
            back.branches[0].distill_loss.map(f64::to_bits),
            Some((0.1f64 + 0.2).to_bits())
        );
        assert_eq!(back.encode().unwrap(), bytes);
        // stage 1 skipped: no loss
        f.branches[0].distill_loss = None;
        let back = ShardFile::decode(&f.encode().unwrap(), Path::new("x.shard")).unwrap();
        assert_eq!(back.branches[0].distill_loss, None);
    }

    /// Shard files as (I, N, branch ids).
    type Files<'a> = &'a [(usize, usize, &'a [&'a str])];

    /// A folder of shard files made from `files`, all of them with
    /// `sample()`'s key and one tensor `ID/w` per branch.
    fn folder(tag: &str, files: Files) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "adaptivenet-shard-unit-{tag}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (i, (index, count, ids)) in files.iter().enumerate() {
            let mut f = sample();
            f.shard = ShardIndex {
                index: *index,
                count: *count,
            };
            f.branches = ids
                .iter()
                .map(|id| ShardBranch {
                    id: id.parse().unwrap(),
                    distill_loss: None,
                    tensors: vec![NamedTensor {
                        name: format!("{id}/w"),
                        dims: vec![2],
                        data: vec![1.0, 2.0],
                    }],
                })
                .collect();
            f.write(&dir.join(format!("f{i}.shard"))).unwrap();
        }
        dir
    }

    #[test]
    fn a_folder_of_shards_must_hold_every_branch_exactly_once() {
        let key = sample().key;
        let expected: Expected = ["m0x2", "s1@50", "s2@50"]
            .iter()
            .map(|id| {
                (
                    id.to_string(),
                    BTreeMap::from([(format!("{id}/w"), vec![2])]),
                )
            })
            .collect();
        let ok = folder("ok", &[(0, 2, &["m0x2", "s2@50"]), (1, 2, &["s1@50"])]);
        let got = read_all(&ok, &key, &expected).unwrap();
        assert_eq!(got.len(), 3);
        let cases: [(&str, Files, &str); 5] = [
            (
                "count",
                &[(0, 2, &["m0x2", "s2@50"]), (1, 3, &["s1@50"])],
                "one of 3 shards",
            ),
            (
                "twice",
                &[(0, 2, &["m0x2", "s2@50"]), (1, 2, &["s1@50", "m0x2"])],
                "branch `m0x2` is in both",
            ),
            (
                "missing",
                &[(0, 2, &["m0x2"]), (1, 2, &["s1@50"])],
                "branch `s2@50` is in no shard file",
            ),
            (
                "unknown",
                &[(0, 2, &["m0x2", "s2@50"]), (1, 2, &["s1@50", "m4x2"])],
                "f1.shard: holds branch `m4x2`",
            ),
            ("empty", &[], "no shard files"),
        ];
        for (tag, files, needle) in cases {
            let dir = folder(tag, files);
            let e = read_all(&dir, &key, &expected).unwrap_err().to_string();
            assert!(e.contains(needle), "{tag}: {e}");
            let _ = std::fs::remove_dir_all(&dir);
        }
        // a branch whose tensors are not the supernet's
        let mut other = expected.clone();
        other.insert(
            "s1@50".into(),
            BTreeMap::from([("s1@50/w".into(), vec![3])]),
        );
        let e = read_all(&ok, &key, &other).unwrap_err().to_string();
        assert!(e.contains("`s1@50/w` has dims [2]"), "{e}");
        // another oracle
        let mut theirs = key.clone();
        theirs.oracle_sha256 = "d".repeat(64);
        let e = read_all(&ok, &theirs, &expected).unwrap_err().to_string();
        assert!(
            e.contains("f0.shard: was trained on the oracle with sha256 aaaa"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&ok);
    }

    #[test]
    fn damaged_files_are_refused_with_the_reason() {
        let bytes = sample().encode().unwrap();
        let p = Path::new("d/stage1-1-of-2.shard");
        let err = |b: &[u8]| ShardFile::decode(b, p).unwrap_err().to_string();
        let mut flipped = bytes.clone();
        let at = bytes.len() - 70;
        flipped[at] ^= 1;
        assert!(err(&flipped).contains("checksum"), "{}", err(&flipped));
        assert!(err(&bytes[..bytes.len() - 3]).contains("checksum"));
        assert!(err(b"PK\x03\x04").contains("not an adaptivenet"));
        let mut v2 = bytes.clone();
        v2[8] = 2;
        assert!(err(&v2).contains("version 2"), "{}", err(&v2));
        assert!(err(&flipped).starts_with("d/stage1-1-of-2.shard: "));
    }
}
