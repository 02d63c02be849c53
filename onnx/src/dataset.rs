//! Labelled (or unlabelled) image datasets in memory, normalised and ready to
//! feed a model: built from IDX files of the MNIST family or NPY tensors,
//! with batching into tract tensors.

use std::path::Path;

use tract_onnx::prelude::*;

use crate::error::{Error, Result};
use crate::idx::read_idx;
use crate::npy::read_npy;

/// Per-channel normalisation applied to raw pixels in [0, 255]:
/// `(x / 255 - mean) / std`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preprocess {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl Preprocess {
    /// Normalise one raw pixel of `channel` (a single mean/std applies to
    /// every channel).
    pub fn apply(&self, channel: usize, raw: u8) -> f32 {
        let m = self
            .mean
            .get(channel)
            .or(self.mean.first())
            .copied()
            .unwrap_or(0.0);
        let s = self
            .std
            .get(channel)
            .or(self.std.first())
            .copied()
            .unwrap_or(1.0);
        (raw as f32 / 255.0 - m) / s
    }

    /// Normalise raw pixels laid out as whole items `(C, H, W)` in
    /// `layout` (the channel of each pixel follows from the layout).
    pub fn apply_image(
        &self,
        layout: crate::ImageLayout,
        chw: (usize, usize, usize),
        raw: &[u8],
    ) -> Vec<f32> {
        raw.iter()
            .enumerate()
            .map(|(i, &px)| self.apply(layout.channel_of(i, chw), px))
            .collect()
    }

    /// Normalise raw pixels laid out as whole items of `item_shape`
    /// (`[C, H, W]`, channel-first): pixel `i` belongs to channel
    /// `(i % item) / (H * W)`.
    pub fn apply_items(&self, item_shape: &[usize], raw: &[u8]) -> Vec<f32> {
        let plane: usize = item_shape.iter().skip(1).product::<usize>().max(1);
        let item: usize = item_shape.iter().product::<usize>().max(1);
        raw.iter()
            .enumerate()
            .map(|(i, &px)| self.apply((i % item) / plane, px))
            .collect()
    }
}

/// Images as float32 [N, C, H, W] in one buffer, with optional labels.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Shape of one item, e.g. [1, 28, 28].
    pub item_shape: Vec<usize>,
    pub data: Vec<f32>,
    pub labels: Option<Vec<i64>>,
}

impl Dataset {
    pub fn len(&self) -> usize {
        let s: usize = self.item_shape.iter().product();
        self.data.len().checked_div(s).unwrap_or(0)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn item_len(&self) -> usize {
        self.item_shape.iter().product()
    }

    /// Load IDX images (and labels) of unsigned bytes, keep items
    /// `range.start..range.end` (clamped), and normalise with `pre`.
    pub fn from_idx(
        images: &Path,
        labels: Option<&Path>,
        pre: &Preprocess,
        range: std::ops::Range<usize>,
    ) -> Result<Dataset> {
        let img = read_idx(images)?;
        if img.dims.len() < 3 {
            return Err(Error::bad_data(
                images.display().to_string(),
                format!("expected images [N, H, W], found dims {:?}", img.dims),
            ));
        }
        let end = range.end.min(img.len());
        let start = range.start.min(end);
        let item_shape: Vec<usize> = if img.dims.len() == 3 {
            vec![1, img.dims[1], img.dims[2]]
        } else {
            img.dims[1..].to_vec()
        };
        let plane: usize = item_shape[1..].iter().product();
        let mut data = Vec::with_capacity((end - start) * img.item_size());
        for i in start..end {
            for (k, &px) in img.item(i).iter().enumerate() {
                data.push(pre.apply(k / plane, px));
            }
        }
        let labels = match labels {
            Some(p) => {
                let l = read_idx(p)?;
                if l.len() != img.len() {
                    return Err(Error::bad_data(
                        p.display().to_string(),
                        format!(
                            "{} labels for {} images in {}",
                            l.len(),
                            img.len(),
                            images.display()
                        ),
                    ));
                }
                Some(l.data[start..end].iter().map(|&x| x as i64).collect())
            }
            None => None,
        };
        Ok(Dataset {
            item_shape,
            data,
            labels,
        })
    }

    /// Load a float32 NPY tensor [N, ...] (already preprocessed) and optional
    /// integer NPY labels `[N]`.
    pub fn from_npy(tensor: &Path, labels: Option<&Path>) -> Result<Dataset> {
        let t = read_npy(tensor)?;
        if t.shape.len() < 2 {
            return Err(Error::bad_data(
                tensor.display().to_string(),
                format!("expected [N, ...], found shape {:?}", t.shape),
            ));
        }
        let labels = match labels {
            Some(p) => {
                let origin = p.display().to_string();
                let l = read_npy(p)?.to_i64(&origin)?;
                if l.len() != t.shape[0] {
                    return Err(Error::bad_data(
                        origin,
                        format!("{} labels for {} items", l.len(), t.shape[0]),
                    ));
                }
                Some(l)
            }
            None => None,
        };
        Ok(Dataset {
            item_shape: t.shape[1..].to_vec(),
            data: t.to_f32(),
            labels,
        })
    }

    /// Items `start..start+n` as one tensor [n, ...].
    /// A stratified subset: the first `per_class` items of each label, in
    /// their original order (all items when unlabelled or a class has
    /// fewer). Deterministic, so a subset result is reproducible.
    pub fn stratified(&self, per_class: usize) -> Dataset {
        let Some(labels) = &self.labels else {
            return self.clone();
        };
        let k: usize = self.item_shape.iter().product();
        let mut taken: std::collections::HashMap<i64, usize> = Default::default();
        let mut data = Vec::new();
        let mut kept = Vec::new();
        for (i, l) in labels.iter().enumerate() {
            let n = taken.entry(*l).or_insert(0);
            if *n < per_class {
                *n += 1;
                data.extend_from_slice(&self.data[i * k..(i + 1) * k]);
                kept.push(*l);
            }
        }
        Dataset {
            item_shape: self.item_shape.clone(),
            data,
            labels: Some(kept),
        }
    }

    pub fn batch(&self, start: usize, n: usize) -> Result<Tensor> {
        let k = self.item_len();
        let end = (start + n).min(self.len());
        let mut shape = vec![end - start];
        shape.extend(&self.item_shape);
        Tensor::from_shape(&shape, &self.data[start * k..end * k])
            .map_err(|e| Error::tract("building an input batch", e))
    }
}

/// Index of the largest value of each row of a [N, C] tensor.
pub fn argmax_rows(t: &Tensor) -> Result<Vec<usize>> {
    let view = t
        .to_plain_array_view::<f32>()
        .map_err(|e| Error::tract("reading logits", e))?;
    let shape = view.shape();
    if shape.len() != 2 {
        return Err(Error::Graph(format!(
            "expected logits [N, C], found shape {shape:?}"
        )));
    }
    let (n, c) = (shape[0], shape[1]);
    let flat: Vec<f32> = view.iter().copied().collect();
    Ok((0..n)
        .map(|i| {
            let row = &flat[i * c..(i + 1) * c];
            let mut best = 0;
            for j in 1..c {
                if row[j] > row[best] {
                    best = j;
                }
            }
            best
        })
        .collect())
}

/// Largest absolute element-wise difference of two float tensors of the same shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    if a.shape() != b.shape() {
        return Err(Error::Graph(format!(
            "shapes differ: {:?} vs {:?}",
            a.shape(),
            b.shape()
        )));
    }
    let va = a
        .to_plain_array_view::<f32>()
        .map_err(|e| Error::tract("reading a tensor", e))?;
    let vb = b
        .to_plain_array_view::<f32>()
        .map_err(|e| Error::tract("reading a tensor", e))?;
    Ok(va
        .iter()
        .zip(vb.iter())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max))
}
