//! Where a model runs, decided before any backend is built, and the one place that turns that
//! decision into a concrete burn backend ([`run_on`]).
//!
//! burn-cuda without a usable GPU panics deep inside with an unhelpful `RecvError`, so CUDA is
//! probed through the driver library first; choosing the CPU never loads that library. wgpu
//! (Vulkan, Metal, DX12) is probed by listing its adapters, so `auto` can tell a real GPU from a
//! software rasteriser such as Mesa's lavapipe, which it never picks.

use serde::{Deserialize, Serialize};

use crate::CpuBackend;

/// What a user asks for: `auto`, `cuda`, `wgpu` or `cpu`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// CUDA when a GPU is present, else a hardware wgpu adapter, else the CPU.
    #[default]
    Auto,
    Cuda,
    /// Any GPU through wgpu (Vulkan, Metal, DX12); a software adapter too, when asked by name.
    Wgpu,
    Cpu,
}

impl DeviceChoice {
    /// Every choice, in the order help texts list them.
    pub const ALL: [DeviceChoice; 4] = [Self::Auto, Self::Cuda, Self::Wgpu, Self::Cpu];

    /// The name configs and command lines use.
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Cuda => "cuda",
            Self::Wgpu => "wgpu",
            Self::Cpu => "cpu",
        }
    }
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|d| d.name() == s)
            .ok_or_else(|| format!("unknown device '{s}': use auto, cuda, wgpu or cpu"))
    }
}

/// Where the work will run, and the one line that says why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceDecision {
    pub device: Device,
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Cpu,
    /// CUDA device index.
    Cuda(usize),
    /// A wgpu adapter: its kind and its index among the adapters of that kind.
    Wgpu(AdapterKind, usize),
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => write!(f, "CPU"),
            Device::Cuda(i) => write!(f, "CUDA device {i}"),
            Device::Wgpu(kind, i) => write!(f, "wgpu {} {i}", kind.name()),
        }
    }
}

/// What kind of device a wgpu adapter is, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum AdapterKind {
    Discrete,
    Integrated,
    Virtual,
    /// A software rasteriser (lavapipe, SwiftShader, WARP): correct but slower than our CPU path.
    Software,
}

impl AdapterKind {
    fn name(self) -> &'static str {
        match self {
            Self::Discrete => "discrete GPU",
            Self::Integrated => "integrated GPU",
            Self::Virtual => "virtual GPU",
            Self::Software => "software adapter",
        }
    }
}

/// One wgpu adapter as the probe saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adapter {
    pub name: String,
    pub kind: AdapterKind,
    /// The graphics API it is reached through (Vulkan, Metal, Dx12).
    pub api: String,
}

/// The probes [`choose`] consults, so tests can stand in for the machine.
struct Probes<C, W> {
    cuda: C,
    wgpu: W,
}

/// Resolves `auto|cuda|wgpu|cpu` against what this build and this machine offer.
pub fn choose(choice: DeviceChoice) -> Result<DeviceDecision, String> {
    choose_with(
        choice,
        Probes {
            cuda: cuda_probe,
            wgpu: wgpu_probe,
        },
    )
}

/// [`choose`] with the probes given; each is called only when its device is a candidate.
fn choose_with(
    choice: DeviceChoice,
    probes: Probes<
        impl FnOnce() -> Result<String, String>,
        impl FnOnce() -> Result<Vec<Adapter>, String>,
    >,
) -> Result<DeviceDecision, String> {
    match choice {
        DeviceChoice::Cpu => Ok(DeviceDecision {
            device: Device::Cpu,
            reason: "CPU, as configured (device = \"cpu\")".into(),
        }),
        DeviceChoice::Cuda => (probes.cuda)().map(cuda_decision).map_err(|why| {
            format!(
                "device = \"cuda\" was requested but no CUDA GPU is usable: {why}; use device = \
                 \"auto\" or \"cpu\" to run on the CPU"
            )
        }),
        DeviceChoice::Wgpu => {
            let adapter = (probes.wgpu)().and_then(|adapters| {
                best_adapter(adapters).ok_or_else(|| "wgpu lists no adapter".to_string())
            });
            adapter
                .map(|a| wgpu_decision(a, "as configured"))
                .map_err(|why| {
                    format!(
                        "device = \"wgpu\" was requested but no wgpu adapter is usable: {why}; use \
                     device = \"auto\" or \"cpu\" to run on the CPU"
                    )
                })
        }
        DeviceChoice::Auto => {
            let no_cuda = match (probes.cuda)() {
                Ok(name) => return Ok(cuda_decision(name)),
                Err(why) => why,
            };
            let no_wgpu = match (probes.wgpu)().map(best_adapter) {
                Ok(Some(a)) if a.kind != AdapterKind::Software => {
                    let why = format!("because no CUDA GPU is usable: {no_cuda}");
                    return Ok(wgpu_decision(a, &why));
                }
                Ok(Some(a)) => format!(
                    "wgpu found only {} ({}), a software adapter, which auto never picks \
                     (device = \"wgpu\" runs on it)",
                    a.name, a.api
                ),
                Ok(None) => "wgpu lists no adapter".into(),
                Err(why) => format!("no wgpu adapter is usable: {why}"),
            };
            Ok(DeviceDecision {
                device: Device::Cpu,
                reason: format!("CPU, because no CUDA GPU is usable: {no_cuda}; {no_wgpu}"),
            })
        }
    }
}

fn cuda_decision(name: String) -> DeviceDecision {
    DeviceDecision {
        device: Device::Cuda(0),
        reason: format!("CUDA device 0 ({name})"),
    }
}

/// The first adapter of its kind, as [`best_adapter`] picks it.
fn wgpu_decision(adapter: Adapter, why: &str) -> DeviceDecision {
    DeviceDecision {
        device: Device::Wgpu(adapter.kind, 0),
        reason: format!(
            "wgpu {} 0: {} ({}), {why}",
            adapter.kind.name(),
            adapter.name,
            adapter.api
        ),
    }
}

/// The best adapter: the first of the best kind.
fn best_adapter(adapters: Vec<Adapter>) -> Option<Adapter> {
    let best = adapters.iter().map(|a| a.kind).min()?;
    adapters.into_iter().find(|a| a.kind == best)
}

/// The first GPU's name, or why CUDA cannot be used.
pub fn cuda_probe() -> Result<String, String> {
    #[cfg(feature = "cuda")]
    return driver::first_device_name();
    #[cfg(not(feature = "cuda"))]
    Err("this binary was built without the `cuda` feature".into())
}

/// The adapters wgpu offers through the platform's graphics API, or why there are none.
pub fn wgpu_probe() -> Result<Vec<Adapter>, String> {
    #[cfg(feature = "wgpu")]
    return Ok(wgpu_adapters::list());
    #[cfg(not(feature = "wgpu"))]
    Err("this binary was built without the `wgpu` feature".into())
}

/// The CUDA backend (f32, TF32 tensor cores where the card has them), with burn's kernel fusion
/// and autotuning.
#[cfg(feature = "cuda")]
pub type CudaBackend = burn::backend::Cuda;

/// The wgpu backend (f32; Vulkan, Metal or DX12 by platform), with fusion and autotuning.
#[cfg(feature = "wgpu")]
pub type WgpuBackend = burn::backend::Wgpu;

/// Work that can run on any backend; [`run_on`] picks the backend at run time.
pub trait OnBackend {
    type Output;
    fn run<B: burn::tensor::backend::Backend>(
        self,
        device: B::Device,
    ) -> anyhow::Result<Self::Output>;
}

/// Runs `job` on the device `choice` resolves to (CUDA first under `auto`), saying which and why.
pub fn run_on<J: OnBackend>(
    choice: DeviceChoice,
    job: J,
    say: &dyn Fn(String),
) -> anyhow::Result<J::Output> {
    let decision = choose(choice).map_err(anyhow::Error::msg)?;
    say(format!("device: {}", decision.reason));
    match decision.device {
        Device::Cpu => job.run::<CpuBackend>(Default::default()),
        #[cfg(feature = "cuda")]
        Device::Cuda(i) => job.run::<CudaBackend>(burn::backend::cuda::CudaDevice::new(i)),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(_) => unreachable!("cuda_probe never finds a GPU without the cuda feature"),
        #[cfg(feature = "wgpu")]
        Device::Wgpu(kind, i) => job.run::<WgpuBackend>(wgpu_adapters::device(kind, i)),
        #[cfg(not(feature = "wgpu"))]
        Device::Wgpu(..) => unreachable!("wgpu_probe lists no adapter without the wgpu feature"),
    }
}

/// Listing wgpu's adapters the way cubecl-wgpu selects among them.
#[cfg(feature = "wgpu")]
pub mod wgpu_adapters {
    use burn::backend::wgpu::WgpuDevice;
    use burn::backend::wgpu::graphics::{AutoGraphicsApi, GraphicsApi};

    use super::{Adapter, AdapterKind};

    /// Every adapter of the graphics API cubecl uses on this platform, in wgpu's order.
    pub fn list() -> Vec<Adapter> {
        let backend = AutoGraphicsApi::backend();
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
            backends: backend.into(),
            ..wgpu::InstanceDescriptor::new_without_display_handle()
        });
        futures_lite::future::block_on(instance.enumerate_adapters(backend.into()))
            .into_iter()
            .filter_map(|adapter| {
                let info = adapter.get_info();
                let kind = match info.device_type {
                    wgpu::DeviceType::DiscreteGpu => AdapterKind::Discrete,
                    wgpu::DeviceType::IntegratedGpu => AdapterKind::Integrated,
                    wgpu::DeviceType::VirtualGpu => AdapterKind::Virtual,
                    wgpu::DeviceType::Cpu => AdapterKind::Software,
                    // cubecl only falls back to these when nothing else exists.
                    wgpu::DeviceType::Other => return None,
                };
                Some(Adapter {
                    name: info.name,
                    kind,
                    api: format!("{:?}", info.backend),
                })
            })
            .collect()
    }

    /// The burn device for the `index`th adapter of `kind`.
    pub fn device(kind: AdapterKind, index: usize) -> WgpuDevice {
        match kind {
            AdapterKind::Discrete => WgpuDevice::DiscreteGpu(index),
            AdapterKind::Integrated => WgpuDevice::IntegratedGpu(index),
            AdapterKind::Virtual => WgpuDevice::VirtualGpu(index),
            AdapterKind::Software => WgpuDevice::Cpu,
        }
    }
}

#[cfg(feature = "cuda")]
mod driver {
    use libloading::{Library, Symbol};

    type CuInit = unsafe extern "C" fn(u32) -> i32;
    type CuDeviceGetCount = unsafe extern "C" fn(*mut i32) -> i32;
    type CuDeviceGet = unsafe extern "C" fn(*mut i32, i32) -> i32;
    type CuDeviceGetName = unsafe extern "C" fn(*mut std::ffi::c_char, i32, i32) -> i32;

    pub(super) fn first_device_name() -> Result<String, String> {
        // SAFETY: loading the CUDA driver runs its initialisers, which is what any CUDA program
        // does; the symbols are called with the signatures of the CUDA driver API.
        unsafe {
            let lib = Library::new("libcuda.so.1")
                .or_else(|_| Library::new("libcuda.so"))
                .map_err(|_| "the CUDA driver (libcuda.so) is not installed".to_string())?;
            let init: Symbol<CuInit> = lib.get(b"cuInit").map_err(|e| e.to_string())?;
            let count: Symbol<CuDeviceGetCount> =
                lib.get(b"cuDeviceGetCount").map_err(|e| e.to_string())?;
            let code = init(0);
            if code != 0 {
                return Err(format!("cuInit failed with CUDA error {code}"));
            }
            let mut n = 0;
            let code = count(&mut n);
            if code != 0 || n == 0 {
                return Err("the CUDA driver reports no GPU".into());
            }
            let get: Symbol<CuDeviceGet> = lib.get(b"cuDeviceGet").map_err(|e| e.to_string())?;
            let name_of: Symbol<CuDeviceGetName> =
                lib.get(b"cuDeviceGetName").map_err(|e| e.to_string())?;
            let mut device = 0;
            let mut name = [0 as std::ffi::c_char; 128];
            if get(&mut device, 0) == 0 && name_of(name.as_mut_ptr(), 128, device) == 0 {
                let name = std::ffi::CStr::from_ptr(name.as_ptr());
                return Ok(name.to_string_lossy().into_owned());
            }
            Ok("unnamed GPU".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adapter(name: &str, kind: AdapterKind) -> Adapter {
        Adapter {
            name: name.into(),
            kind,
            api: "Vulkan".into(),
        }
    }

    fn found() -> Result<String, String> {
        Ok("Test GPU".into())
    }

    fn missing() -> Result<String, String> {
        Err("no driver".into())
    }

    fn lavapipe() -> Result<Vec<Adapter>, String> {
        Ok(vec![adapter("llvmpipe", AdapterKind::Software)])
    }

    fn radeon_and_lavapipe() -> Result<Vec<Adapter>, String> {
        Ok(vec![
            adapter("llvmpipe", AdapterKind::Software),
            adapter("Intel UHD", AdapterKind::Integrated),
            adapter("Radeon", AdapterKind::Discrete),
        ])
    }

    fn no_wgpu() -> Result<Vec<Adapter>, String> {
        Err("no Vulkan loader".into())
    }

    #[test]
    fn cpu_is_always_available_says_why_and_never_probes() {
        let probes = Probes {
            cuda: || -> Result<String, String> { panic!("the CUDA probe ran") },
            wgpu: || -> Result<Vec<Adapter>, String> { panic!("the wgpu probe ran") },
        };
        let d = choose_with(DeviceChoice::Cpu, probes).unwrap();
        assert_eq!(d.device, Device::Cpu);
        assert!(d.reason.contains("configured"));
    }

    #[test]
    fn auto_prefers_cuda_and_never_probes_wgpu_when_it_has_it() {
        let probes = Probes {
            cuda: found,
            wgpu: || -> Result<Vec<Adapter>, String> { panic!("the wgpu probe ran") },
        };
        let d = choose_with(DeviceChoice::Auto, probes).unwrap();
        assert_eq!(d.device, Device::Cuda(0));
        assert!(d.reason.contains("Test GPU"), "{}", d.reason);
    }

    #[test]
    fn cuda_follows_its_probe() {
        let d = choose_with(
            DeviceChoice::Cuda,
            Probes {
                cuda: found,
                wgpu: no_wgpu,
            },
        )
        .unwrap();
        assert_eq!(d.device, Device::Cuda(0));
        let err = choose_with(
            DeviceChoice::Cuda,
            Probes {
                cuda: missing,
                wgpu: lavapipe,
            },
        )
        .unwrap_err();
        assert!(err.contains("no CUDA GPU is usable: no driver"), "{err}");
    }

    #[test]
    fn auto_takes_a_hardware_wgpu_adapter_after_cuda_the_best_kind_first() {
        let probes = Probes {
            cuda: missing,
            wgpu: radeon_and_lavapipe,
        };
        let d = choose_with(DeviceChoice::Auto, probes).unwrap();
        assert_eq!(d.device, Device::Wgpu(AdapterKind::Discrete, 0));
        assert!(d.reason.contains("Radeon (Vulkan)"), "{}", d.reason);
        assert!(d.reason.contains("no driver"), "{}", d.reason);
    }

    #[test]
    fn auto_never_picks_a_software_adapter_and_says_so() {
        let d = choose_with(
            DeviceChoice::Auto,
            Probes {
                cuda: missing,
                wgpu: lavapipe,
            },
        )
        .unwrap();
        assert_eq!(d.device, Device::Cpu);
        assert!(d.reason.contains("no driver"), "{}", d.reason);
        assert!(d.reason.contains("llvmpipe"), "{}", d.reason);
        assert!(d.reason.contains("auto never picks"), "{}", d.reason);
        let d = choose_with(
            DeviceChoice::Auto,
            Probes {
                cuda: missing,
                wgpu: no_wgpu,
            },
        )
        .unwrap();
        assert_eq!(d.device, Device::Cpu);
        assert!(d.reason.contains("no Vulkan loader"), "{}", d.reason);
    }

    #[test]
    fn wgpu_by_name_runs_on_a_software_adapter_or_says_why_not() {
        let d = choose_with(
            DeviceChoice::Wgpu,
            Probes {
                cuda: found,
                wgpu: lavapipe,
            },
        )
        .unwrap();
        assert_eq!(d.device, Device::Wgpu(AdapterKind::Software, 0));
        assert!(d.reason.contains("llvmpipe"), "{}", d.reason);
        let err = choose_with(
            DeviceChoice::Wgpu,
            Probes {
                cuda: found,
                wgpu: no_wgpu,
            },
        )
        .unwrap_err();
        assert!(
            err.contains("no wgpu adapter is usable: no Vulkan loader"),
            "{err}"
        );
        let none = || Ok::<Vec<Adapter>, String>(vec![]);
        let err = choose_with(
            DeviceChoice::Wgpu,
            Probes {
                cuda: found,
                wgpu: none,
            },
        )
        .unwrap_err();
        assert!(err.contains("lists no adapter"), "{err}");
    }

    #[test]
    fn this_machine_agrees_with_its_probes() {
        let auto = choose(DeviceChoice::Auto).unwrap();
        match (cuda_probe(), wgpu_probe().map(best_adapter)) {
            (Ok(_), _) => assert_eq!(auto.device, Device::Cuda(0)),
            (Err(why), Ok(Some(a))) if a.kind != AdapterKind::Software => {
                assert_eq!(auto.device, Device::Wgpu(a.kind, 0));
                assert!(auto.reason.contains(&why));
            }
            (Err(why), _) => {
                assert_eq!(auto.device, Device::Cpu);
                assert!(auto.reason.contains(&why));
                let err = choose(DeviceChoice::Cuda).unwrap_err();
                assert!(err.contains("no CUDA GPU is usable"), "{err}");
            }
        }
    }

    #[test]
    fn names_round_trip() {
        for d in DeviceChoice::ALL {
            assert_eq!(d.name().parse::<DeviceChoice>().unwrap(), d);
        }
        assert!(
            "gpu"
                .parse::<DeviceChoice>()
                .unwrap_err()
                .contains("auto, cuda, wgpu or cpu")
        );
    }
}
