//! Composite ops written as plain functions of primitives (they need no VJP rules of their
//! own): softmax, log_softmax, rms_norm, gelu (tanh), rope, causal mask, cross-entropy.
use crate::trace::{Tensor, Tracer};
use crate::types::{DType, TensorType};

/// The dtype in which norms, softmax and angles are computed: f32, or f64 for f64 inputs.
fn wide(d: DType) -> DType {
    if d == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

impl Tensor {
    /// Max over `axis` kept as a size-1 dimension, without gradient (for stable exponentials).
    #[track_caller]
    fn max_keep(&self, axis: usize) -> Tensor {
        let dims = self.dims();
        let kept: Vec<usize> = (0..dims.len()).filter(|&d| d != axis).collect();
        self.max_over(&[axis]).stop_gradient().broadcast_in_dim(&dims, &kept)
    }

    /// Sum over `axis`, broadcast back to this shape.
    #[track_caller]
    fn sum_keep(&self, axis: usize) -> Tensor {
        let dims = self.dims();
        let kept: Vec<usize> = (0..dims.len()).filter(|&d| d != axis).collect();
        self.sum(&[axis]).broadcast_in_dim(&dims, &kept)
    }

    /// softmax along `axis`.
    #[track_caller]
    pub fn softmax(&self, axis: usize) -> Tensor {
        let e = (self - self.max_keep(axis)).exp();
        &e / e.sum_keep(axis)
    }

    /// log(softmax) along `axis`, computed stably.
    #[track_caller]
    pub fn log_softmax(&self, axis: usize) -> Tensor {
        let shifted = self - self.max_keep(axis);
        &shifted - shifted.exp().sum_keep(axis).log()
    }

    /// Gemma's RMSNorm over the last axis: x / sqrt(mean(x^2) + eps) * (1 + w), computed in
    /// f32 (f64 for f64 inputs) and returned in x's dtype. `w` has the size of the last axis.
    #[track_caller]
    pub fn rms_norm(&self, w: &Tensor, eps: f64) -> Tensor {
        if self.rank() == 0 {
            return self.fail("rms_norm", "needs at least one dimension".into());
        }
        let last = self.rank() - 1;
        let wd = wide(self.dtype());
        let x = self.convert(wd);
        let var = (&x * &x).mean(&[last]);
        let dims = x.dims();
        let kept: Vec<usize> = (0..last).collect();
        let inv = (var + eps).rsqrt().broadcast_in_dim(&dims, &kept);
        let scale = w.convert(wd) + 1.0;
        (x * inv * scale).convert(self.dtype())
    }

    /// GELU with the tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
    #[track_caller]
    pub fn gelu_tanh(&self) -> Tensor {
        let c = (2.0 / std::f64::consts::PI).sqrt();
        let inner = (self + self * self * self * 0.044715) * c;
        self * 0.5 * (inner.tanh() + 1.0)
    }

    /// Rotary position embedding with rotated halves (not interleaved), as Gemma and HF do:
    /// x [B, T, N, H] at integer positions [B, T]; frequencies theta^(-2i/H), angles in f32
    /// (f64 for f64 inputs).
    #[track_caller]
    pub fn rope(&self, positions: &Tensor, theta: f64) -> Tensor {
        self.rope_scaled(positions, theta, 1.0)
    }

    /// [`Tensor::rope`] with linear position scaling: the angles of position p are those of
    /// p / `factor` (transformers' "linear" RoPE scaling, which divides the frequencies).
    #[track_caller]
    pub fn rope_scaled(&self, positions: &Tensor, theta: f64, factor: f64) -> Tensor {
        let d = self.dims();
        if d.len() != 4 || d[3] % 2 != 0 || positions.dims() != d[..2] {
            let why = format!("needs x [B, T, N, H] with H even and positions [B, T], got positions {}", positions.ty());
            return self.fail("rope", why);
        }
        let (b, t, n, h) = (d[0], d[1], d[2], d[3]);
        let half = h / 2;
        let inv_freq: Vec<f64> = (0..half).map(|i| 1.0 / theta.powf((2 * i) as f64 / h as f64) / factor).collect();
        let wd = wide(self.dtype());
        let freq = self.tracer().constant(&TensorType::new(wd, &[half]), inv_freq);
        let pos = positions.convert(wd);
        let angles = pos.broadcast_in_dim(&[b, t, half], &[0, 1]) * freq.broadcast_in_dim(&[b, t, half], &[2]);
        let shape = [b, t, n, half];
        let cos = angles.cos().convert(self.dtype()).broadcast_in_dim(&shape, &[0, 1, 3]);
        let sin = angles.sin().convert(self.dtype()).broadcast_in_dim(&shape, &[0, 1, 3]);
        let x1 = self.slice_axis(3, 0, half);
        let x2 = self.slice_axis(3, half, h);
        let r1 = &x1 * &cos - &x2 * &sin;
        let r2 = &x2 * &cos + &x1 * &sin;
        r1.concat(&[&r2], 3)
    }

    /// One-hot encoding of integer ids [...] as [..., depth] in `dtype`.
    #[track_caller]
    pub fn one_hot(&self, depth: i64, dtype: DType) -> Tensor {
        let mut dims = self.dims();
        dims.push(depth);
        let iota = self.tracer().iota(&TensorType::new(self.dtype(), &dims), dims.len() - 1);
        let kept: Vec<usize> = (0..dims.len() - 1).collect();
        iota.eq(&self.broadcast_in_dim(&dims, &kept)).convert(dtype)
    }

    /// Mean cross-entropy of logits [..., V] against integer labels [...], in f32 (f64 for
    /// f64 logits). With a
    /// mask [...] (1 = counted), the mean is over the masked positions.
    #[track_caller]
    pub fn cross_entropy(&self, labels: &Tensor, mask: Option<&Tensor>) -> Tensor {
        if self.rank() == 0 || labels.dims() != self.dims()[..self.rank() - 1] {
            return self.fail("cross_entropy", format!("needs logits [..., V] and labels [...], got labels {}", labels.ty()));
        }
        let last = self.rank() - 1;
        let wd = wide(self.dtype());
        // nll = logsumexp(x) - x[label]: the label's logit picked by a select (no one-hot
        // product), so the backward is the closed form (softmax(x) - one_hot) * g: the
        // exponentials' VJP gives softmax * g and the select's puts -g at the labels.
        let x = self.convert(wd);
        let shifted = &x - x.max_keep(last);
        let lse = shifted.exp().sum(&[last]).log();
        let dims = self.dims();
        let kept: Vec<usize> = (0..last).collect();
        let iota = self.tracer().iota(&TensorType::new(labels.dtype(), &dims), last);
        let hit = iota.eq(&labels.broadcast_in_dim(&dims, &kept));
        let picked = Tensor::select(&hit, &shifted, &shifted.zeros_like()).sum(&[last]);
        let nll = lse - picked;
        match mask {
            None => nll.mean(&(0..last).collect::<Vec<_>>()),
            Some(m) => {
                let m = m.convert(wd);
                (nll * &m).sum_all() / m.sum_all()
            }
        }
    }
}

impl Tracer {
    /// A pred [T, S] mask, true where query t may attend to key s: s <= t + offset.
    #[track_caller]
    pub fn causal_mask(&self, t: i64, s: i64, offset: i64) -> Tensor {
        let ty = TensorType::new(DType::S32, &[t, s]);
        let rows = self.iota(&ty, 0) + self.constant_int(&TensorType::scalar(DType::S32), vec![offset]);
        let cols = self.iota(&ty, 1);
        cols.le(&rows)
    }
}
