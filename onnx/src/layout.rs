//! Image layouts of a model input: which axis holds the channels (`NCHW`,
//! channel-first as PyTorch exports; `NHWC`, channel-last as image decoders
//! and TensorFlow produce), the item shape in each, and the transposes of
//! whole items between them. The daemon uses this to accept raw pixels in
//! either layout, the data sources to build items in the model's layout.

use std::fmt;
use std::str::FromStr;

/// Where the channels of an image item are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ImageLayout {
    /// `[N, C, H, W]`: one plane per channel.
    Nchw,
    /// `[N, H, W, C]`: the channels of each pixel together.
    Nhwc,
}

/// A layout string that is not `NCHW` or `NHWC`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("layout `{0}` is not an image layout; expected `NCHW` or `NHWC`")]
pub struct LayoutError(pub String);

impl FromStr for ImageLayout {
    type Err = LayoutError;
    fn from_str(s: &str) -> Result<ImageLayout, LayoutError> {
        match s.trim().to_ascii_uppercase().as_str() {
            "NCHW" => Ok(ImageLayout::Nchw),
            "NHWC" => Ok(ImageLayout::Nhwc),
            _ => Err(LayoutError(s.to_string())),
        }
    }
}

impl fmt::Display for ImageLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ImageLayout::Nchw => "NCHW",
            ImageLayout::Nhwc => "NHWC",
        })
    }
}

impl ImageLayout {
    /// The image layout a manifest's `input.layout` names, if it names one
    /// (`NC`, `NCL`... are not image layouts).
    pub fn of(layout: &str) -> Option<ImageLayout> {
        layout.parse().ok()
    }

    /// The other image layout.
    pub fn other(self) -> ImageLayout {
        match self {
            ImageLayout::Nchw => ImageLayout::Nhwc,
            ImageLayout::Nhwc => ImageLayout::Nchw,
        }
    }

    /// `(C, H, W)` of an item shape (without the batch) in this layout;
    /// `None` unless it has 3 dims.
    pub fn chw(self, item: &[usize]) -> Option<(usize, usize, usize)> {
        match (self, item) {
            (ImageLayout::Nchw, &[c, h, w]) => Some((c, h, w)),
            (ImageLayout::Nhwc, &[h, w, c]) => Some((c, h, w)),
            _ => None,
        }
    }

    /// The item shape of `(C, H, W)` in this layout.
    pub fn item_shape(self, (c, h, w): (usize, usize, usize)) -> Vec<usize> {
        match self {
            ImageLayout::Nchw => vec![c, h, w],
            ImageLayout::Nhwc => vec![h, w, c],
        }
    }

    /// The channel of element `i` of a buffer of whole items in this layout.
    pub fn channel_of(self, i: usize, (c, h, w): (usize, usize, usize)) -> usize {
        match self {
            ImageLayout::Nchw => (i % (c * h * w).max(1)) / (h * w).max(1),
            ImageLayout::Nhwc => i % c.max(1),
        }
    }

    /// Rewrite whole items `(C, H, W)` from this layout into `to`
    /// (a copy when the layouts are the same). `data.len()` must be a
    /// multiple of `C * H * W`; a trailing partial item is dropped.
    pub fn transpose<T: Copy>(
        self,
        to: ImageLayout,
        data: &[T],
        (c, h, w): (usize, usize, usize),
    ) -> Vec<T> {
        if self == to {
            return data.to_vec();
        }
        let (plane, item) = (h * w, c * h * w);
        if item == 0 {
            return Vec::new();
        }
        let mut out = Vec::with_capacity(data.len() / item * item);
        for it in data.chunks_exact(item) {
            match self {
                // NHWC -> NCHW: gather each channel's plane.
                ImageLayout::Nhwc => {
                    for ch in 0..c {
                        out.extend((0..plane).map(|p| it[p * c + ch]));
                    }
                }
                // NCHW -> NHWC: interleave the planes.
                ImageLayout::Nchw => {
                    for p in 0..plane {
                        out.extend((0..c).map(|ch| it[ch * plane + p]));
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        assert_eq!("nchw".parse::<ImageLayout>().unwrap(), ImageLayout::Nchw);
        assert_eq!(" NHWC".parse::<ImageLayout>().unwrap(), ImageLayout::Nhwc);
        assert_eq!(ImageLayout::Nhwc.to_string(), "NHWC");
        let e = "NC".parse::<ImageLayout>().unwrap_err().to_string();
        assert!(e.contains("`NC`") && e.contains("NHWC"), "{e}");
        assert_eq!(ImageLayout::of("NCL"), None);
    }

    #[test]
    fn transposes_round_trip_and_match_index_formulas() {
        // 2 items of (C=3, H=2, W=4), values = their NCHW index.
        let dims = (3, 2, 4);
        let nchw: Vec<u32> = (0..48).collect();
        let nhwc = ImageLayout::Nchw.transpose(ImageLayout::Nhwc, &nchw, dims);
        assert_eq!(nhwc.len(), 48);
        // NHWC element (n, y, x, c) is NCHW element (n, c, y, x).
        for n in 0..2 {
            for y in 0..2 {
                for x in 0..4 {
                    for c in 0..3 {
                        let hwc = n * 24 + (y * 4 + x) * 3 + c;
                        let chw = n * 24 + c * 8 + y * 4 + x;
                        assert_eq!(nhwc[hwc], chw as u32);
                        assert_eq!(ImageLayout::Nhwc.channel_of(hwc, dims), c);
                        assert_eq!(ImageLayout::Nchw.channel_of(chw, dims), c);
                    }
                }
            }
        }
        assert_eq!(
            ImageLayout::Nhwc.transpose(ImageLayout::Nchw, &nhwc, dims),
            nchw
        );
        assert_eq!(ImageLayout::Nhwc.chw(&[2, 4, 3]), Some(dims));
        assert_eq!(ImageLayout::Nhwc.item_shape(dims), vec![2, 4, 3]);
        assert_eq!(ImageLayout::Nchw.chw(&[3, 2]), None);
    }
}
