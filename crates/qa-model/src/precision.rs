//! The precision the encoder's matrix products run in: f32, or bf16 mixed precision as PyTorch's
//! autocast does it (burn 0.21 has no AMP of its own).
//!
//! Under bf16 the weights, optimizer state, layer norms, softmax, loss and gradient sums stay f32;
//! only the operands of each matrix product (linear layers, attention scores and the weighted
//! sum of values) are cast to bf16 inside the forward pass, and each product is cast back. burn's
//! cast is differentiable, so the backward pass runs the same products in bf16 and hands f32
//! gradients to the weights.

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    Bf16,
}

impl Precision {
    /// Every precision, in the order help texts list them.
    pub const ALL: [Precision; 2] = [Self::F32, Self::Bf16];

    /// The name configs and command lines use.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
        }
    }

    /// Why backend `B` cannot run this precision on `device`, if it cannot. On the CPU bf16
    /// needs AVX-512 BF16: emulated, its products would be slower than f32, not faster.
    pub fn check<B: Backend>(self, device: &B::Device) -> Result<(), String> {
        if self == Self::Bf16
            && crate::kernels::on_cpu_kernels::<B>()
            && !crate::kernels::bf16_native()
        {
            return Err(
                "precision = \"bf16\" on the CPU needs AVX-512 BF16 (the vdpbf16ps \
                        instruction: AMD Zen 4 and later, Intel Cooper Lake and Sapphire Rapids \
                        and later), which this CPU lacks; use precision = \"f32\""
                    .into(),
            );
        }
        if self == Self::Bf16 && !B::supports_dtype(device, DType::BF16) {
            return Err(format!(
                "precision = \"bf16\" needs a backend with bf16 arithmetic, and {} declares none \
                 (burn 0.21's wgpu has no bf16 on Vulkan, Metal or WebGPU); use precision = \
                 \"f32\" here, or CUDA (bf16 on Ampere and later)",
                B::name(device)
            ));
        }
        Ok(())
    }

    /// `a · b`, with both operands in this precision and the product back in f32.
    pub fn matmul<B: Backend, const D: usize>(
        self,
        a: Tensor<B, D>,
        b: Tensor<B, D>,
    ) -> Tensor<B, D> {
        match self {
            Self::F32 => a.matmul(b),
            Self::Bf16 => a
                .cast(DType::BF16)
                .matmul(b.cast(DType::BF16))
                .cast(DType::F32),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| format!("unknown precision '{s}': use f32 or bf16"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    type B = crate::CpuBackend;

    #[test]
    fn names_round_trip() {
        for p in Precision::ALL {
            assert_eq!(p.name().parse::<Precision>().unwrap(), p);
        }
        assert!(
            "fp16"
                .parse::<Precision>()
                .unwrap_err()
                .contains("f32 or bf16")
        );
    }

    #[test]
    fn the_cpu_backend_runs_bf16_where_the_cpu_has_it() {
        let device = Default::default();
        let checks = [
            Precision::Bf16.check::<B>(&device),
            Precision::Bf16.check::<burn::backend::Autodiff<B>>(&device),
        ];
        for check in checks {
            match crate::kernels::bf16_native() {
                true => assert!(check.is_ok(), "{check:?}"),
                false => assert!(check.unwrap_err().contains("AVX-512 BF16")),
            }
        }
        assert!(Precision::F32.check::<B>(&device).is_ok());
    }

    #[test]
    #[cfg(feature = "ndarray")]
    fn a_backend_without_bf16_is_refused_by_name() {
        let device = Default::default();
        let err = Precision::Bf16
            .check::<burn::backend::NdArray>(&device)
            .unwrap_err();
        assert!(err.contains("bf16"), "{err}");
        assert!(
            Precision::F32
                .check::<burn::backend::NdArray>(&device)
                .is_ok()
        );
    }

    /// A bf16 product of unit-variance operands over 384 terms: each operand keeps 8 significant
    /// bits (relative error at most 2⁻⁹), so the product's error is about √384 · 2⁻⁸ ≈ 0.08 of
    /// one term's size; the result is f32.
    #[test]
    fn bf16_matmul_is_close_to_f32_and_comes_back_as_f32() {
        let device = Default::default();
        let a = Tensor::<B, 2>::random([16, 384], Distribution::Normal(0.0, 1.0), &device);
        let b = Tensor::<B, 2>::random([384, 32], Distribution::Normal(0.0, 1.0), &device);
        let exact = Precision::F32.matmul(a.clone(), b.clone());
        let mixed = Precision::Bf16.matmul(a, b);
        assert_eq!(mixed.dtype(), DType::F32);
        let worst = (exact.clone() - mixed).abs().max().into_scalar();
        let spread = exact.abs().max().into_scalar();
        assert!(worst > 0.0, "bf16 rounded nothing");
        assert!(
            worst < 0.5,
            "largest difference {worst} (largest value {spread})"
        );
    }
}
