//! Data sources named on the command line or in config files, loaded into a
//! [`Dataset`] shaped for a model's input:
//!
//! - `idx:IMAGES[,LABELS]`: IDX files of the MNIST family (plain or .gz);
//! - `npy:TENSOR[,LABELS]`: a float32 NPY tensor [N, ...], already
//!   preprocessed, with optional integer labels `[N]`;
//! - `folder:DIR`: one sub-folder per class (sorted by name, or in the order
//!   of the model's labels when the names match, a `/` in a label written
//!   `_`), PNG or JPEG images,
//!   converted to the model's channels (grey or RGB) and resized to its
//!   height and width;
//!
//! Images come out in the model's layout (`NCHW` or `NHWC`, from the
//! manifest); NPY tensors are taken as they are (already in it).
//!
//! each optionally followed by a slice `[START:END]` (either end may be
//! omitted), e.g. `idx:t10k-images.gz,t10k-labels.gz[0:2000]`.

use std::path::{Path, PathBuf};

use crate::dataset::{Dataset, Preprocess};
use crate::error::{Error, Result};
use crate::layout::ImageLayout;

/// A parsed data source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataSource {
    pub kind: SourceKind,
    pub start: usize,
    pub end: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceKind {
    Idx {
        images: PathBuf,
        labels: Option<PathBuf>,
    },
    Npy {
        tensor: PathBuf,
        labels: Option<PathBuf>,
    },
    Folder {
        dir: PathBuf,
    },
}

impl std::str::FromStr for DataSource {
    type Err = Error;
    fn from_str(s: &str) -> Result<DataSource> {
        let bad = |m: &str| Error::bad_data(s, m.to_string());
        let (body, start, end) = match s.rfind('[') {
            Some(at) if s.ends_with(']') => {
                let sl = &s[at + 1..s.len() - 1];
                let (a, b) = sl
                    .split_once(':')
                    .ok_or_else(|| bad("a slice is written [START:END]"))?;
                let num = |t: &str| -> Result<Option<usize>> {
                    if t.trim().is_empty() {
                        Ok(None)
                    } else {
                        t.trim()
                            .parse()
                            .map(Some)
                            .map_err(|_| bad("slice bounds must be whole numbers"))
                    }
                };
                let (a, b) = (num(a)?.unwrap_or(0), num(b)?);
                if b.is_some_and(|b| b <= a) {
                    return Err(bad("the slice is empty"));
                }
                (&s[..at], a, b)
            }
            _ => (s, 0, None),
        };
        let (kind, rest) = body
            .split_once(':')
            .ok_or_else(|| bad("expected idx:, npy: or folder: before the path"))?;
        let mut parts = rest.split(',').map(|p| PathBuf::from(p.trim()));
        let first = parts
            .next()
            .filter(|p| !p.as_os_str().is_empty())
            .ok_or_else(|| bad("no path given"))?;
        let second = parts.next();
        let kind = match kind {
            "idx" => SourceKind::Idx {
                images: first,
                labels: second,
            },
            "npy" => SourceKind::Npy {
                tensor: first,
                labels: second,
            },
            "folder" => SourceKind::Folder { dir: first },
            other => {
                return Err(bad(&format!(
                    "unknown data source kind `{other}` (use idx, npy or folder)"
                )))
            }
        };
        Ok(DataSource { kind, start, end })
    }
}

impl DataSource {
    /// Load the source for a model whose input item shape is `item_shape`
    /// (`[C, H, W]` for `NCHW`, `[H, W, C]` for `NHWC`) in `layout` (the
    /// manifest's `input.layout`), normalising raw pixels with `pre`;
    /// `labels` are the model's class names (used to order folder classes).
    pub fn load(
        &self,
        item_shape: &[usize],
        layout: &str,
        pre: &Preprocess,
        labels: &[String],
    ) -> Result<Dataset> {
        let range = self.start..self.end.unwrap_or(usize::MAX);
        let image = ImageLayout::of(layout);
        let data = match &self.kind {
            SourceKind::Idx { images, labels } => in_layout(
                Dataset::from_idx(images, labels.as_deref(), pre, range)?,
                image,
            ),
            SourceKind::Npy { tensor, labels } => {
                let mut d = Dataset::from_npy(tensor, labels.as_deref())?;
                let (k, n) = (d.item_shape.iter().product::<usize>(), d.len());
                let end = range.end.min(n);
                let start = range.start.min(end);
                d.data = d.data[start * k..end * k].to_vec();
                d.labels = d.labels.map(|l| l[start..end].to_vec());
                d
            }
            SourceKind::Folder { dir } => {
                let chw = image.and_then(|l| l.chw(item_shape)).ok_or_else(|| {
                    Error::bad_data(
                        dir.display().to_string(),
                        format!(
                            "image folders need an NCHW or NHWC image input; the model takes {item_shape:?} ({layout})"
                        ),
                    )
                })?;
                in_layout(load_folder(dir, chw, pre, labels, range)?, image)
            }
        };
        let origin = self.origin();
        if data.is_empty() {
            return Err(Error::bad_data(origin, "no items selected"));
        }
        if data.item_shape != item_shape {
            return Err(Error::bad_data(
                origin,
                format!(
                    "items have shape {:?} but the model expects {:?}",
                    data.item_shape, item_shape
                ),
            ));
        }
        Ok(data)
    }

    fn origin(&self) -> String {
        match &self.kind {
            SourceKind::Idx { images, .. } => images.display().to_string(),
            SourceKind::Npy { tensor, .. } => tensor.display().to_string(),
            SourceKind::Folder { dir } => dir.display().to_string(),
        }
    }
}

/// Channel-first items (as the IDX and folder loaders make them) rewritten
/// into the model's image layout.
fn in_layout(mut d: Dataset, layout: Option<ImageLayout>) -> Dataset {
    if let (Some(ImageLayout::Nhwc), &[c, h, w]) = (layout, d.item_shape.as_slice()) {
        d.data = ImageLayout::Nchw.transpose(ImageLayout::Nhwc, &d.data, (c, h, w));
        d.item_shape = vec![h, w, c];
    }
    d
}

/// A folder of class sub-folders of images, as channel-first items `chw`.
fn load_folder(
    dir: &Path,
    (c, h, w): (usize, usize, usize),
    pre: &Preprocess,
    labels: &[String],
    range: std::ops::Range<usize>,
) -> Result<Dataset> {
    let origin = dir.display().to_string();
    if !(c == 1 || c == 3) {
        return Err(Error::bad_data(
            &origin,
            format!("image folders need 1 (grey) or 3 (RGB) channels; the model takes {c}"),
        ));
    }
    let item_shape = [c, h, w];
    let (h, w) = (h as u32, w as u32);
    let mut classes: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    classes.sort();
    if classes.is_empty() {
        return Err(Error::bad_data(
            &origin,
            "no class sub-folders (expected one sub-folder of images per class)",
        ));
    }
    // A label with `/` (`T-shirt/top`) names the folder `T-shirt_top`.
    let class_index = |name: &str, k: usize| {
        labels
            .iter()
            .position(|l| l == name || l.replace('/', "_") == name)
            .unwrap_or(k)
    };
    let mut files: Vec<(PathBuf, i64)> = Vec::new();
    for (k, class) in classes.iter().enumerate() {
        let mut imgs: Vec<PathBuf> = std::fs::read_dir(dir.join(class))
            .map_err(|e| Error::io(dir.join(class), e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension()
                    .map(|x| {
                        matches!(
                            x.to_string_lossy().to_lowercase().as_str(),
                            "png" | "jpg" | "jpeg"
                        )
                    })
                    .unwrap_or(false)
            })
            .collect();
        imgs.sort();
        files.extend(imgs.into_iter().map(|p| (p, class_index(class, k) as i64)));
    }
    if files.is_empty() {
        return Err(Error::bad_data(
            &origin,
            "no PNG or JPEG images in the class sub-folders",
        ));
    }
    let end = range.end.min(files.len());
    let start = range.start.min(end);
    let mut data = Vec::with_capacity((end - start) * item_shape.iter().product::<usize>());
    let mut out_labels = Vec::new();
    for (path, label) in &files[start..end] {
        let img = image::open(path).map_err(|e| {
            Error::bad_data(
                path.display().to_string(),
                format!("cannot decode image: {e}"),
            )
        })?;
        let img = if img.width() != w || img.height() != h {
            img.resize_exact(w, h, image::imageops::FilterType::Triangle)
        } else {
            img
        };
        if c == 1 {
            let g = img.to_luma8();
            data.extend(g.pixels().map(|p| pre.apply(0, p.0[0])));
        } else {
            let rgb = img.to_rgb8();
            for ch in 0..3 {
                data.extend(rgb.pixels().map(|p| pre.apply(ch, p.0[ch])));
            }
        }
        out_labels.push(*label);
    }
    Ok(Dataset {
        item_shape: item_shape.to_vec(),
        data,
        labels: Some(out_labels),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kinds_and_slices() {
        let d: DataSource = "idx:a.gz,b.gz[0:2000]".parse().unwrap();
        assert_eq!(
            d.kind,
            SourceKind::Idx {
                images: "a.gz".into(),
                labels: Some("b.gz".into())
            }
        );
        assert_eq!((d.start, d.end), (0, Some(2000)));
        let d: DataSource = "folder:/data/imgs[2000:]".parse().unwrap();
        assert_eq!((d.start, d.end), (2000, None));
        assert!("csv:x".parse::<DataSource>().is_err());
        assert!("idx:a[5:5]".parse::<DataSource>().is_err());
        assert!("a.gz".parse::<DataSource>().is_err());
    }

    #[test]
    fn folder_of_pngs_loads_with_labels_and_empty_folder_is_an_error() {
        let dir = std::env::temp_dir().join(format!("adaptivenet-folder-{}", std::process::id()));
        let subset =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/data");
        let idx = crate::idx::read_idx(subset.join("fmnist-test-1k-images-idx3-ubyte.gz")).unwrap();
        let lab = crate::idx::read_idx(subset.join("fmnist-test-1k-labels-idx1-ubyte.gz")).unwrap();
        let names = ["T-shirt/top", "Trouser"];
        for i in 0..40 {
            let class = lab.data[i] as usize;
            if class > 1 {
                continue;
            }
            let d = dir.join(names[class].replace('/', "_"));
            std::fs::create_dir_all(&d).unwrap();
            image::GrayImage::from_raw(28, 28, idx.item(i).to_vec())
                .unwrap()
                .save(d.join(format!("{i:03}.png")))
                .unwrap();
        }
        let pre = Preprocess {
            mean: vec![0.0],
            std: vec![1.0],
        };
        let labels: Vec<String> = vec!["T-shirt_top".into(), "Trouser".into()];
        let ds: DataSource = format!("folder:{}", dir.display()).parse().unwrap();
        let data = ds.load(&[1, 28, 28], "NCHW", &pre, &labels).unwrap();
        assert!(data.len() > 5);
        let l = data.labels.as_ref().unwrap();
        assert!(l.contains(&0) && l.contains(&1));
        // pixels survive the PNG round trip exactly
        let first_png = std::fs::read_dir(dir.join("T-shirt_top")).unwrap().count();
        assert!(first_png > 0);
        let empty = dir.join("empty");
        std::fs::create_dir_all(&empty).unwrap();
        let err = format!("folder:{}", empty.display())
            .parse::<DataSource>()
            .unwrap()
            .load(&[1, 28, 28], "NCHW", &pre, &labels)
            .unwrap_err();
        assert!(err.to_string().contains("no class sub-folders"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rgb_folder_is_resized_normalised_per_channel_in_either_layout() {
        let dir = std::env::temp_dir().join(format!("adaptivenet-rgb-{}", std::process::id()));
        // class `a`: solid PNGs of another size; class `b`: a solid JPEG.
        let colours = [[200u8, 40, 90], [10, 250, 128]];
        for (k, class) in ["a", "b"].iter().enumerate() {
            let d = dir.join(class);
            std::fs::create_dir_all(&d).unwrap();
            let img = image::RgbImage::from_pixel(40, 30, image::Rgb(colours[k]));
            let name = if k == 0 { "x.png" } else { "x.jpg" };
            img.save(d.join(name)).unwrap();
        }
        let pre = Preprocess {
            mean: vec![0.5, 0.4, 0.3],
            std: vec![0.2, 0.25, 0.3],
        };
        let src: DataSource = format!("folder:{}", dir.display()).parse().unwrap();
        let nchw = src.load(&[3, 8, 6], "NCHW", &pre, &[]).unwrap();
        assert_eq!(nchw.item_shape, vec![3, 8, 6]);
        assert_eq!(nchw.labels.as_deref(), Some(&[0i64, 1][..]));
        // every pixel of the PNG item is its colour, normalised per channel
        for (ch, (&png, &jpeg)) in colours[0].iter().zip(&colours[1]).enumerate() {
            let want = pre.apply(ch, png);
            assert!(nchw.data[ch * 48..(ch + 1) * 48].iter().all(|&v| v == want));
            // the JPEG is lossy: within a few levels
            let got = nchw.data[144 + ch * 48];
            let want = pre.apply(ch, jpeg);
            assert!(
                (got - want).abs() < 4.0 / 255.0 / pre.std[ch],
                "{got} vs {want}"
            );
        }
        let nhwc = src.load(&[8, 6, 3], "NHWC", &pre, &[]).unwrap();
        assert_eq!(nhwc.item_shape, vec![8, 6, 3]);
        assert_eq!(
            nhwc.data,
            ImageLayout::Nchw.transpose(ImageLayout::Nhwc, &nchw.data, (3, 8, 6))
        );
        let e = src
            .load(&[4, 8, 6], "NCHW", &pre, &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("1 (grey) or 3 (RGB)"), "{e}");
        let e = src.load(&[3, 8], "NCL", &pre, &[]).unwrap_err().to_string();
        assert!(e.contains("NCHW or NHWC"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
