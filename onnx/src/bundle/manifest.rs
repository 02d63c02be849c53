//! `manifest.yaml`: what a bundle carries (model identity, input spec, cuts,
//! branches, checksums of the other files), and the branch / subnet ids.
//!
//! Ids are short and round-trip through text:
//! - `b3`: the original block B_3 (c_3 -> c_4);
//! - `m3x2`: a merge from c_3 spanning 2 blocks (c_3 -> c_5);
//! - `s4@50`: block 4 shrunk to 50% of its hidden channels (c_4 -> c_5);
//! - a subnet is the ids of its path joined by spaces: `b0 m1x2 b3 s4@50 b5`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The only manifest format this code reads and writes.
pub const FORMAT_VERSION: u32 = 1;

/// Name of the manifest inside the bundle.
pub const MANIFEST_FILE: &str = "manifest.yaml";
/// Name of the minisign signature of the manifest inside the bundle.
pub const SIGNATURE_FILE: &str = "manifest.sig";
/// Name of the supernet model inside the bundle.
pub const SUPERNET_FILE: &str = "supernet.onnx";
/// Folder of the optional calibration sample inside the bundle.
pub const CALIBRATION_DIR: &str = "calibration/";

// ---------------------------------------------------------------------------
// Branch and subnet ids
// ---------------------------------------------------------------------------

/// The id of a branch: which cuts it joins and how it was built.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BranchId {
    /// The oracle's block `block` (c_block -> c_block+1), written `b3`.
    Original { block: usize },
    /// A merge from cut `from` spanning `span` blocks, written `m3x2`.
    Merge { from: usize, span: usize },
    /// Block `block` with hidden channels pruned to `percent`%, written `s4@50`.
    Shrink { block: usize, percent: u32 },
}

impl BranchId {
    /// The cut the branch reads.
    pub fn from_cut(&self) -> usize {
        match *self {
            BranchId::Original { block } | BranchId::Shrink { block, .. } => block,
            BranchId::Merge { from, .. } => from,
        }
    }
    /// The cut the branch writes.
    pub fn to_cut(&self) -> usize {
        match *self {
            BranchId::Original { block } | BranchId::Shrink { block, .. } => block + 1,
            BranchId::Merge { from, span } => from + span,
        }
    }
    /// The kind of branch this id names.
    pub fn kind(&self) -> BranchKind {
        match self {
            BranchId::Original { .. } => BranchKind::Original,
            BranchId::Merge { .. } => BranchKind::Merge,
            BranchId::Shrink { .. } => BranchKind::Shrink,
        }
    }
    /// For a shrink, the kept fraction of hidden channels (0.5 for `s4@50`).
    pub fn ratio(&self) -> Option<f64> {
        match *self {
            BranchId::Shrink { percent, .. } => Some(percent as f64 / 100.0),
            _ => None,
        }
    }
    /// The id of a shrink of `block` to `ratio` (0 < ratio < 1, a whole percentage).
    pub fn shrink(block: usize, ratio: f64) -> Result<BranchId, IdError> {
        let percent = (ratio * 100.0).round();
        if !(ratio > 0.0 && ratio < 1.0) || (percent - ratio * 100.0).abs() > 1e-6 {
            return Err(IdError(format!(
                "shrink ratio {ratio} must be a whole percentage strictly between 0 and 1 (for example 0.5)"
            )));
        }
        Ok(BranchId::Shrink {
            block,
            percent: percent as u32,
        })
    }
}

impl fmt::Display for BranchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            BranchId::Original { block } => write!(f, "b{block}"),
            BranchId::Merge { from, span } => write!(f, "m{from}x{span}"),
            BranchId::Shrink { block, percent } => write!(f, "s{block}@{percent}"),
        }
    }
}

/// A branch or subnet id that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct IdError(pub String);

fn parse_index(s: &str, whole: &str, what: &str) -> Result<usize, IdError> {
    // Digits only: no sign, no spaces, no leading zeros (so the text form is unique).
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
    {
        return Err(IdError(format!(
            "branch id `{whole}`: {what} `{s}` is not a number"
        )));
    }
    s.parse()
        .map_err(|_| IdError(format!("branch id `{whole}`: {what} `{s}` is too large")))
}

impl FromStr for BranchId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let bad = || {
            IdError(format!(
                "`{s}` is not a branch id; expected `b<block>` (b3), `m<from>x<span>` (m3x2) or `s<block>@<percent>` (s4@50)"
            ))
        };
        let (tag, rest) = s.split_at_checked(1).ok_or_else(bad)?;
        match tag {
            "b" => Ok(BranchId::Original {
                block: parse_index(rest, s, "block")?,
            }),
            "m" => {
                let (from, span) = rest.split_once('x').ok_or_else(bad)?;
                let from = parse_index(from, s, "cut")?;
                let span = parse_index(span, s, "span")?;
                if span < 2 {
                    return Err(IdError(format!(
                        "branch id `{s}`: a merge spans at least 2 blocks"
                    )));
                }
                Ok(BranchId::Merge { from, span })
            }
            "s" => {
                let (block, pct) = rest.split_once('@').ok_or_else(bad)?;
                let block = parse_index(block, s, "block")?;
                let percent = parse_index(pct, s, "percent")?;
                if !(1..=99).contains(&percent) {
                    return Err(IdError(format!(
                        "branch id `{s}`: the percentage must be between 1 and 99"
                    )));
                }
                Ok(BranchId::Shrink {
                    block,
                    percent: percent as u32,
                })
            }
            _ => Err(bad()),
        }
    }
}

impl Serialize for BranchId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for BranchId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A subnet: a path of branches from c_0 to c_N, written as the branch ids
/// joined by single spaces (`b0 m1x2 b3 s4@50 b5`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubnetId(pub Vec<BranchId>);

impl SubnetId {
    /// The branches of the path, in order.
    pub fn branches(&self) -> &[BranchId] {
        &self.0
    }
    /// The path of originals b0..b{n-1}: the oracle itself.
    pub fn oracle(num_blocks: usize) -> SubnetId {
        SubnetId(
            (0..num_blocks)
                .map(|block| BranchId::Original { block })
                .collect(),
        )
    }
    /// Check that the path is contiguous from c_0 to c_`num_blocks` (without
    /// looking at which branches exist; see [`Manifest::validate_subnet`]).
    pub fn check_path(&self, num_blocks: usize) -> Result<(), IdError> {
        let mut at = 0;
        for b in &self.0 {
            if b.from_cut() != at {
                return Err(IdError(format!(
                    "subnet `{self}`: branch `{b}` starts at cut {} but the path is at cut {at}",
                    b.from_cut()
                )));
            }
            at = b.to_cut();
        }
        if at != num_blocks {
            return Err(IdError(format!(
                "subnet `{self}` ends at cut {at}; a subnet must reach the last cut c_{num_blocks}"
            )));
        }
        Ok(())
    }
}

impl fmt::Display for SubnetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{b}")?;
        }
        Ok(())
    }
}

impl FromStr for SubnetId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let ids = s
            .split_whitespace()
            .map(BranchId::from_str)
            .collect::<Result<Vec<_>, _>>()?;
        if ids.is_empty() {
            return Err(IdError(
                "an empty subnet id; expected branch ids joined by spaces (`b0 m1x2 b3`)".into(),
            ));
        }
        Ok(SubnetId(ids))
    }
}

impl Serialize for SubnetId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SubnetId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

// ---------------------------------------------------------------------------
// The manifest
// ---------------------------------------------------------------------------

/// One dimension of a shape: a fixed size, `-1` (dynamic) or a symbol (`N`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Dim {
    Fixed(i64),
    Symbol(String),
}

impl Dim {
    /// The size, if fixed and positive.
    pub fn fixed(&self) -> Option<usize> {
        match self {
            Dim::Fixed(n) if *n > 0 => Some(*n as usize),
            _ => None,
        }
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Symbol(s) => f.write_str(s),
        }
    }
}

/// A shape with a symbolic (or -1) batch first and fixed sizes after it.
pub fn batch_shape(symbol: &str, rest: &[usize]) -> Vec<Dim> {
    std::iter::once(Dim::Symbol(symbol.to_string()))
        .chain(rest.iter().map(|&d| Dim::Fixed(d as i64)))
        .collect()
}

/// Text form of a shape: `[N, 1, 28, 28]`.
pub fn shape_string(shape: &[Dim]) -> String {
    format!(
        "[{}]",
        shape
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// The manifest of a bundle (`manifest.yaml`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`FORMAT_VERSION`].
    pub format_version: u32,
    pub model: ModelInfo,
    /// The device class the bundle is built for (for example `generic-cpu`).
    pub compatible: String,
    pub input: InputSpec,
    pub output: OutputSpec,
    /// Cuts c_0..c_N, by index.
    pub cuts: Vec<Cut>,
    /// Every branch of the supernet, originals included.
    pub branches: Vec<Branch>,
    /// sha256 (lowercase hex) of every file of the bundle except
    /// `manifest.yaml` and `manifest.sig`.
    #[serde(default)]
    pub files: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<CreatedBy>,
}

/// Model identity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelInfo {
    pub name: String,
    /// Monotonically increasing: a device only replaces a bundle by a newer one.
    pub version: u64,
}

/// The model input and how to prepare data for it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// Graph input name.
    pub name: String,
    /// Shape with the batch as a symbolic first dim (or -1).
    pub shape: Vec<Dim>,
    /// Element type, as ONNX names it (`float`) or short (`f32`).
    pub dtype: String,
    /// Axis meaning, one letter per dim (`NCHW`).
    pub layout: String,
    pub preprocess: Preprocess,
    /// Class names, index = class id.
    #[serde(default)]
    pub labels: Vec<String>,
}

/// Per-channel normalisation of raw pixels: `(x / 255 - mean) / std`.
pub use crate::dataset::Preprocess;

/// The model output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    pub name: String,
}

/// A cut tensor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cut {
    pub index: usize,
    pub tensor: String,
    pub shape: Vec<Dim>,
}

/// What kind of branch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BranchKind {
    Original,
    Merge,
    Shrink,
}

impl fmt::Display for BranchKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BranchKind::Original => "original",
            BranchKind::Merge => "merge",
            BranchKind::Shrink => "shrink",
        })
    }
}

/// A branch c_from -> c_to of the supernet.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Branch {
    pub id: BranchId,
    pub from: usize,
    pub to: usize,
    pub kind: BranchKind,
    /// Kind-specific parameters (`span` for merges, `ratio` for shrinks, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, serde_json::Value>,
    /// The supernet tensor the branch writes (for originals: the cut tensor c_to).
    pub tensor: String,
    /// Multiply-accumulates per sample.
    pub macs: u64,
    pub param_count: u64,
    /// Distillation loss reached in training (none for originals).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distill_loss: Option<f64>,
}

impl Branch {
    /// An original block as a branch.
    pub fn original(
        block: usize,
        tensor: impl Into<String>,
        macs: u64,
        param_count: u64,
    ) -> Branch {
        Branch {
            id: BranchId::Original { block },
            from: block,
            to: block + 1,
            kind: BranchKind::Original,
            params: BTreeMap::new(),
            tensor: tensor.into(),
            macs,
            param_count,
            distill_loss: None,
        }
    }
}

/// Which tool made the bundle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreatedBy {
    pub tool: String,
    pub version: String,
    /// Free text: host, date, command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A manifest that does not parse or does not hold together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// YAML syntax, an unknown or missing key, a wrong type (with its line).
    #[error("{0}")]
    Parse(String),
    /// Parsed, but inconsistent (field path and what was expected).
    #[error("{0}")]
    Invalid(String),
}

/// A file name that cannot stand inside a bundle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileNameError {
    #[error("an empty file name")]
    Empty,
    #[error("`{0}` is not a relative path with `/` separators")]
    NotRelative(String),
    #[error("`{0}` has an empty, `.` or `..` component")]
    BadComponent(String),
}

/// Is `name` a safe relative file name inside a bundle (`calibration/x.npy`)?
pub fn check_file_name(name: &str) -> Result<(), FileNameError> {
    if name.is_empty() {
        return Err(FileNameError::Empty);
    }
    if name.starts_with('/') || name.contains('\\') || name.contains('\0') {
        return Err(FileNameError::NotRelative(name.to_string()));
    }
    if name
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(FileNameError::BadComponent(name.to_string()));
    }
    Ok(())
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl Manifest {
    /// Parse and validate `manifest.yaml`. Unknown keys are rejected with
    /// their name and line.
    pub fn from_yaml(text: &str) -> Result<Manifest, ManifestError> {
        let m: Manifest =
            yaml_serde::from_str(text).map_err(|e| ManifestError::Parse(yaml_error(&e)))?;
        m.validate()?;
        Ok(m)
    }

    /// Serialise to YAML (after validating).
    pub fn to_yaml(&self) -> Result<String, ManifestError> {
        self.validate()?;
        yaml_serde::to_string(self)
            .map_err(|e| ManifestError::Invalid(format!("cannot serialise the manifest: {e}")))
    }

    /// The shape of one input item (the input shape without the batch);
    /// `None` when a dim after the batch is not fixed.
    pub fn item_shape(&self) -> Option<Vec<usize>> {
        self.input.shape.iter().skip(1).map(|d| d.fixed()).collect()
    }

    /// The input's image layout, when `input.layout` is `NCHW` or `NHWC`.
    pub fn image_layout(&self) -> Option<crate::ImageLayout> {
        crate::ImageLayout::of(&self.input.layout)
    }

    /// The number of channels of an image input (`C` of `NCHW` / `NHWC`), if fixed.
    pub fn input_channels(&self) -> Option<usize> {
        let at = match self.image_layout()? {
            crate::ImageLayout::Nchw => 1,
            crate::ImageLayout::Nhwc => 3,
        };
        (self.input.shape.len() == 4)
            .then(|| self.input.shape[at].fixed())
            .flatten()
    }

    /// Declare the input's image layout (`NCHW` or `NHWC`): the model's
    /// graph input must already be in it; checked against the shape and the
    /// per-channel mean/std.
    pub fn set_input_layout(&mut self, layout: &str) -> Result<(), ManifestError> {
        let l: crate::ImageLayout = layout.parse().map_err(|e: crate::layout::LayoutError| {
            ManifestError::Invalid(format!("input.layout: {e}"))
        })?;
        if self.input.shape.len() != 4 {
            return Err(ManifestError::Invalid(format!(
                "input.layout: {l} needs a 4-d input; the model's input is {}",
                shape_string(&self.input.shape)
            )));
        }
        let old = std::mem::replace(&mut self.input.layout, l.to_string());
        self.validate().inspect_err(|_| self.input.layout = old)
    }

    /// Number of blocks N (cuts are c_0..c_N).
    pub fn num_blocks(&self) -> usize {
        self.cuts.len().saturating_sub(1)
    }

    /// The branch with this id.
    pub fn branch(&self, id: &BranchId) -> Option<&Branch> {
        self.branches.iter().find(|b| b.id == *id)
    }

    /// The path of originals (the oracle).
    pub fn oracle_subnet(&self) -> SubnetId {
        SubnetId::oracle(self.num_blocks())
    }

    /// Check that `subnet` is a contiguous path c_0 -> c_N through branches
    /// of this manifest.
    pub fn validate_subnet(&self, subnet: &SubnetId) -> Result<(), IdError> {
        for b in subnet.branches() {
            if self.branch(b).is_none() {
                return Err(IdError(format!(
                    "subnet `{subnet}`: branch `{b}` is not in the bundle"
                )));
            }
        }
        subnet.check_path(self.num_blocks())
    }

    /// How many subnets (paths c_0 -> c_N) the branches allow (saturating).
    pub fn count_subnets(&self) -> u128 {
        let n = self.num_blocks();
        let mut ways = vec![0u128; n + 1];
        ways[0] = 1;
        for at in 0..n {
            for b in self.branches.iter().filter(|b| b.from == at && b.to <= n) {
                ways[b.to] = ways[b.to].saturating_add(ways[at]);
            }
        }
        ways[n]
    }

    /// Parse a subnet id and check it against this manifest.
    pub fn parse_subnet(&self, text: &str) -> Result<SubnetId, IdError> {
        let s: SubnetId = text.parse()?;
        self.validate_subnet(&s)?;
        Ok(s)
    }

    /// Consistency checks beyond the YAML schema; the message names the field.
    pub fn validate(&self) -> Result<(), ManifestError> {
        let bad = |s: String| Err(ManifestError::Invalid(s));
        if self.format_version != FORMAT_VERSION {
            return bad(format!(
                "format_version: {} is not supported; this build reads format_version {FORMAT_VERSION}",
                self.format_version
            ));
        }
        if self.model.name.trim().is_empty() {
            return bad("model.name: must not be empty".into());
        }
        if self.compatible.trim().is_empty() {
            return bad("compatible: must name a device class (for example `generic-cpu`)".into());
        }
        let inp = &self.input;
        if inp.name.is_empty() {
            return bad("input.name: must not be empty".into());
        }
        check_shape("input.shape", &inp.shape)?;
        if inp.dtype.trim().is_empty() {
            return bad("input.dtype: must not be empty (for example `float`)".into());
        }
        if inp.layout.chars().count() != inp.shape.len() {
            return bad(format!(
                "input.layout: `{}` has {} letters but input.shape has {} dims",
                inp.layout,
                inp.layout.chars().count(),
                inp.shape.len()
            ));
        }
        let pp = &inp.preprocess;
        if pp.mean.is_empty() || pp.mean.len() != pp.std.len() {
            return bad(format!(
                "input.preprocess: mean ({} values) and std ({} values) must be non-empty and of equal length",
                pp.mean.len(),
                pp.std.len()
            ));
        }
        if let Some(c) = self.input_channels() {
            if pp.mean.len() != 1 && pp.mean.len() != c {
                return bad(format!(
                    "input.preprocess: {} mean/std values, but the {} input {} has {c} channels; give 1 value (for every channel) or {c}",
                    pp.mean.len(),
                    inp.layout,
                    shape_string(&inp.shape)
                ));
            }
        }
        if let Some(i) = pp.std.iter().position(|s| !(s.is_finite() && *s > 0.0)) {
            return bad(format!(
                "input.preprocess.std[{i}]: {} must be a positive number",
                pp.std[i]
            ));
        }
        if let Some(i) = pp.mean.iter().position(|m| !m.is_finite()) {
            return bad(format!(
                "input.preprocess.mean[{i}]: must be a finite number"
            ));
        }
        if self.output.name.is_empty() {
            return bad("output.name: must not be empty".into());
        }
        if self.cuts.len() < 2 {
            return bad(format!(
                "cuts: {} listed; a supernet needs at least 2 cuts (one block)",
                self.cuts.len()
            ));
        }
        for (i, c) in self.cuts.iter().enumerate() {
            if c.index != i {
                return bad(format!(
                    "cuts[{i}].index: {} but cuts must be listed as 0, 1, 2, ... in order",
                    c.index
                ));
            }
            if c.tensor.is_empty() {
                return bad(format!("cuts[{i}].tensor: must not be empty"));
            }
            check_shape(&format!("cuts[{i}].shape"), &c.shape)?;
        }
        let n = self.num_blocks();
        let mut seen = BTreeSet::new();
        for (i, b) in self.branches.iter().enumerate() {
            let at = format!("branches[{i}] (`{}`)", b.id);
            if !seen.insert(b.id) {
                return bad(format!("{at}: the id is listed twice"));
            }
            if b.from != b.id.from_cut() || b.to != b.id.to_cut() {
                return bad(format!(
                    "{at}: from {} / to {} do not match the id, which means {} -> {}",
                    b.from,
                    b.to,
                    b.id.from_cut(),
                    b.id.to_cut()
                ));
            }
            if b.kind != b.id.kind() {
                return bad(format!(
                    "{at}: kind `{}` does not match the id, which is a {}",
                    b.kind,
                    b.id.kind()
                ));
            }
            if b.to > n {
                return bad(format!(
                    "{at}: ends at cut {} but the last cut is c_{n}",
                    b.to
                ));
            }
            if b.tensor.is_empty() {
                return bad(format!("{at}: tensor must not be empty"));
            }
            if b.kind == BranchKind::Original && b.tensor != self.cuts[b.to].tensor {
                return bad(format!(
                    "{at}: an original writes the cut tensor `{}`, not `{}`",
                    self.cuts[b.to].tensor, b.tensor
                ));
            }
            if b.kind != BranchKind::Original && self.cuts.iter().any(|c| c.tensor == b.tensor) {
                return bad(format!(
                    "{at}: a {} must write its own tensor, not the cut tensor `{}`",
                    b.kind, b.tensor
                ));
            }
            if let Some(l) = b.distill_loss {
                if !l.is_finite() || l < 0.0 {
                    return bad(format!(
                        "{at}: distill_loss {l} must be a finite non-negative number"
                    ));
                }
            }
        }
        for block in 0..n {
            if !seen.contains(&BranchId::Original { block }) {
                return bad(format!("branches: the original block `b{block}` is missing; every block must be listed"));
            }
        }
        let mut tensors = BTreeSet::new();
        for b in self
            .branches
            .iter()
            .filter(|b| b.kind != BranchKind::Original)
        {
            if !tensors.insert(&b.tensor) {
                return bad(format!(
                    "branches (`{}`): tensor `{}` is written by two branches",
                    b.id, b.tensor
                ));
            }
        }
        for (name, hash) in &self.files {
            check_file_name(name).map_err(|e| ManifestError::Invalid(format!("files: {e}")))?;
            if name == MANIFEST_FILE || name == SIGNATURE_FILE {
                return bad(format!(
                    "files: `{name}` must not be listed (it cannot hold its own checksum)"
                ));
            }
            if !is_sha256_hex(hash) {
                return bad(format!(
                    "files.`{name}`: `{hash}` is not a sha256 in lowercase hex (64 characters)"
                ));
            }
        }
        Ok(())
    }
}

fn check_shape(at: &str, shape: &[Dim]) -> Result<(), ManifestError> {
    if shape.is_empty() {
        return Err(ManifestError::Invalid(format!(
            "{at}: must have at least one dim"
        )));
    }
    for (i, d) in shape.iter().enumerate() {
        let ok = match d {
            Dim::Fixed(n) => *n > 0 || (i == 0 && *n == -1),
            Dim::Symbol(s) => i == 0 && !s.is_empty(),
        };
        if !ok {
            return Err(ManifestError::Invalid(format!(
                "{at}[{i}]: `{d}`; only the first (batch) dim may be symbolic or -1, the others must be positive"
            )));
        }
    }
    Ok(())
}

/// A YAML error on one line, with its location if the parser gives one.
fn yaml_error(e: &yaml_serde::Error) -> String {
    let msg = e.to_string().replace('\n', " ");
    match e.location() {
        Some(loc) if !msg.contains("line") => format!("line {}: {msg}", loc.line()),
        _ => msg,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branch_ids_round_trip() {
        for (text, id) in [
            ("b0", BranchId::Original { block: 0 }),
            ("b13", BranchId::Original { block: 13 }),
            ("m3x2", BranchId::Merge { from: 3, span: 2 }),
            ("m10x3", BranchId::Merge { from: 10, span: 3 }),
            (
                "s4@50",
                BranchId::Shrink {
                    block: 4,
                    percent: 50,
                },
            ),
            (
                "s0@25",
                BranchId::Shrink {
                    block: 0,
                    percent: 25,
                },
            ),
        ] {
            let parsed: BranchId = text.parse().unwrap();
            assert_eq!(parsed, id, "{text}");
            assert_eq!(id.to_string(), text);
        }
        assert_eq!(BranchId::shrink(4, 0.5).unwrap().to_string(), "s4@50");
        assert_eq!(BranchId::shrink(2, 0.25).unwrap().ratio(), Some(0.25));
        assert!(BranchId::shrink(2, 0.125).is_err());
        assert!(BranchId::shrink(2, 1.0).is_err());
        let m: BranchId = "m3x2".parse().unwrap();
        assert_eq!(
            (m.from_cut(), m.to_cut(), m.kind()),
            (3, 5, BranchKind::Merge)
        );
    }

    #[test]
    fn bad_branch_ids_are_rejected() {
        for bad in [
            "", "b", "x3", "b-1", "b+1", "b01", "m3", "m3x1", "m3x", "mx2", "s4", "s4@0", "s4@100",
            "s4@5.5", "B3", " b3", "b3 ",
        ] {
            assert!(bad.parse::<BranchId>().is_err(), "`{bad}` should not parse");
        }
    }

    #[test]
    fn subnet_ids_round_trip_and_validate() {
        let text = "b0 m1x2 b3 s4@50 b5";
        let s: SubnetId = text.parse().unwrap();
        assert_eq!(s.to_string(), text);
        assert_eq!(s.branches().len(), 5);
        s.check_path(6).unwrap();
        assert!(s.check_path(7).unwrap_err().0.contains("ends at cut 6"));
        let gap: SubnetId = "b0 b2".parse().unwrap();
        assert!(gap
            .check_path(3)
            .unwrap_err()
            .0
            .contains("`b2` starts at cut 2"));
        assert!("".parse::<SubnetId>().is_err());
        assert!("b0 q1".parse::<SubnetId>().is_err());
        // Extra whitespace is accepted on input; output is canonical.
        let loose: SubnetId = "  b0\tb1  ".parse().unwrap();
        assert_eq!(loose.to_string(), "b0 b1");
        assert_eq!(SubnetId::oracle(3).to_string(), "b0 b1 b2");
    }

    pub(crate) fn sample() -> Manifest {
        let cut = |i: usize| Cut {
            index: i,
            tensor: format!("c{i}"),
            shape: batch_shape("N", &[8, 4, 4]),
        };
        let mut branches: Vec<Branch> = (0..3)
            .map(|b| Branch::original(b, format!("c{}", b + 1), 100, 10))
            .collect();
        branches.push(Branch {
            id: "m0x2".parse().unwrap(),
            from: 0,
            to: 2,
            kind: BranchKind::Merge,
            params: [("span".to_string(), serde_json::json!(2))].into(),
            tensor: "branch_m0x2".into(),
            macs: 120,
            param_count: 12,
            distill_loss: Some(0.01),
        });
        Manifest {
            format_version: 1,
            model: ModelInfo {
                name: "toy".into(),
                version: 3,
            },
            compatible: "generic-cpu".into(),
            input: InputSpec {
                name: "x".into(),
                shape: batch_shape("N", &[1, 4, 4]),
                dtype: "float".into(),
                layout: "NCHW".into(),
                preprocess: Preprocess {
                    mean: vec![0.5],
                    std: vec![0.25],
                },
                labels: vec!["a".into(), "b".into()],
            },
            output: OutputSpec { name: "y".into() },
            cuts: (0..4).map(cut).collect(),
            branches,
            files: BTreeMap::new(),
            created_by: None,
        }
    }

    #[test]
    fn manifest_round_trips_through_yaml() {
        let m = sample();
        let text = m.to_yaml().unwrap();
        let back = Manifest::from_yaml(&text).unwrap();
        assert_eq!(back, m);
        m.validate_subnet(&"m0x2 b2".parse().unwrap()).unwrap();
        assert_eq!(m.count_subnets(), 2);
        assert!(m
            .parse_subnet("b0 m1x2")
            .unwrap_err()
            .0
            .contains("`m1x2` is not in the bundle"));
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let text =
            sample()
                .to_yaml()
                .unwrap()
                .replacen("compatible:", "colour: red\ncompatible:", 1);
        let err = Manifest::from_yaml(&text).unwrap_err().to_string();
        assert!(err.contains("unknown field `colour`"), "{err}");
        assert!(err.contains("line "), "{err}");
        let nested =
            sample()
                .to_yaml()
                .unwrap()
                .replacen("  version: 3", "  version: 3\n  flavour: x", 1);
        let err = Manifest::from_yaml(&nested).unwrap_err().to_string();
        assert!(err.contains("unknown field `flavour`"), "{err}");
    }

    #[test]
    fn inconsistent_manifests_are_rejected() {
        let mut m = sample();
        m.branches[3].to = 3;
        assert!(m
            .validate()
            .unwrap_err()
            .to_string()
            .contains("do not match the id"));
        let mut m = sample();
        m.branches.remove(1);
        assert!(m
            .validate()
            .unwrap_err()
            .to_string()
            .contains("`b1` is missing"));
        let mut m = sample();
        m.format_version = 2;
        assert!(m
            .validate()
            .unwrap_err()
            .to_string()
            .contains("format_version"));
        let mut m = sample();
        m.files.insert("../etc/passwd".into(), "0".repeat(64));
        assert!(m.validate().unwrap_err().to_string().contains(".."));
        let mut m = sample();
        m.input.shape[2] = Dim::Fixed(-1);
        assert!(m
            .validate()
            .unwrap_err()
            .to_string()
            .contains("input.shape[2]"));
        let mut m = sample();
        m.branches[0].tensor = "other".into();
        assert!(m
            .validate()
            .unwrap_err()
            .to_string()
            .contains("writes the cut tensor `c1`"));
    }

    #[test]
    fn image_layouts_are_checked_against_channels() {
        let mut m = sample();
        m.input.shape = batch_shape("N", &[3, 4, 4]);
        m.input.preprocess = Preprocess {
            mean: vec![0.5, 0.4, 0.3],
            std: vec![0.2, 0.2, 0.2],
        };
        m.validate().unwrap();
        assert_eq!(m.input_channels(), Some(3));
        // read as NHWC, [3, 4, 4] has 4 channels: 3 values do not fit
        let e = m.set_input_layout("nhwc").unwrap_err().to_string();
        assert!(e.contains("has 4 channels"), "{e}");
        assert_eq!(m.input.layout, "NCHW", "a rejected layout is not kept");
        m.input.shape = batch_shape("N", &[4, 4, 3]);
        m.set_input_layout("NHWC").unwrap();
        assert_eq!(m.image_layout(), Some(crate::ImageLayout::Nhwc));
        assert_eq!(m.input_channels(), Some(3));
        let e = m.set_input_layout("NC").unwrap_err().to_string();
        assert!(e.contains("input.layout") && e.contains("NHWC"), "{e}");
        // one mean/std for every channel is fine
        m.input.preprocess.mean.truncate(1);
        m.input.preprocess.std.truncate(1);
        m.validate().unwrap();
    }
}
