//! The two per-pixel maps the loop passes around: a saliency map in [0, 1] and a binary mask,
//! both at the model's input size, row-major. Plain data: computing them is `saliency`'s and
//! `mask`'s job.

/// A saliency map in [0, 1], row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct SaliencyMap {
    pub width: usize,
    pub height: usize,
    pub data: Vec<f32>,
}

/// A binary mask, row-major, `true` = masked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mask {
    pub width: usize,
    pub height: usize,
    pub data: Vec<bool>,
}

impl Mask {
    pub fn empty(width: usize, height: usize) -> Self {
        Mask {
            width,
            height,
            data: vec![false; width * height],
        }
    }

    pub fn count(&self) -> usize {
        self.data.iter().filter(|&&b| b).count()
    }

    /// Fraction of the image covered, in [0, 1].
    pub fn coverage(&self) -> f32 {
        self.count() as f32 / self.data.len().max(1) as f32
    }

    /// Combines two masks of the same size pixel by pixel.
    fn zip_with(&self, other: &Mask, f: impl Fn(bool, bool) -> bool) -> Mask {
        assert_eq!((self.width, self.height), (other.width, other.height));
        Mask {
            width: self.width,
            height: self.height,
            data: self
                .data
                .iter()
                .zip(&other.data)
                .map(|(a, b)| f(*a, *b))
                .collect(),
        }
    }

    /// Pixel-wise OR.
    pub fn union(&self, other: &Mask) -> Mask {
        self.zip_with(other, |a, b| a || b)
    }

    /// Pixels set in `self` but not in `other`.
    pub fn minus(&self, other: &Mask) -> Mask {
        self.zip_with(other, |a, b| a && !b)
    }

    /// True where `self` has a pixel that `other` lacks.
    pub fn adds_to(&self, other: &Mask) -> bool {
        self.data.iter().zip(&other.data).any(|(a, b)| *a && !*b)
    }

    /// True when every pixel is masked.
    pub fn is_full(&self) -> bool {
        self.data.iter().all(|&b| b)
    }
}
