//! Where a model runs, decided before any backend is built, and the one place that turns that
//! decision into a concrete burn backend ([`run_on`]).
//!
//! burn-cuda without a usable GPU panics deep inside with an unhelpful `RecvError`, so CUDA is
//! probed through the driver library first; choosing the CPU never loads that library.

use serde::{Deserialize, Serialize};

use crate::CpuBackend;

/// What a user asks for: `auto`, `cuda` or `cpu`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// CUDA when a GPU is present, else the CPU.
    #[default]
    Auto,
    Cuda,
    Cpu,
}

impl DeviceChoice {
    /// Every choice, in the order help texts list them.
    pub const ALL: [DeviceChoice; 3] = [Self::Auto, Self::Cuda, Self::Cpu];

    /// The name configs and command lines use.
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Cuda => "cuda",
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
            .ok_or_else(|| format!("unknown device '{s}': use auto, cuda or cpu"))
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
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => write!(f, "CPU"),
            Device::Cuda(i) => write!(f, "CUDA device {i}"),
        }
    }
}

/// Resolves `auto|cuda|cpu` against what this build and this machine offer.
pub fn choose(choice: DeviceChoice) -> Result<DeviceDecision, String> {
    choose_with(choice, cuda_probe)
}

/// [`choose`] with the CUDA probe given; `probe` is only called when CUDA is a candidate.
fn choose_with(
    choice: DeviceChoice,
    probe: impl FnOnce() -> Result<String, String>,
) -> Result<DeviceDecision, String> {
    if choice == DeviceChoice::Cpu {
        return Ok(DeviceDecision {
            device: Device::Cpu,
            reason: "CPU, as configured (device = \"cpu\")".into(),
        });
    }
    match (choice, probe()) {
        (_, Ok(name)) => Ok(DeviceDecision {
            device: Device::Cuda(0),
            reason: format!("CUDA device 0 ({name})"),
        }),
        (DeviceChoice::Cuda, Err(why)) => Err(format!(
            "device = \"cuda\" was requested but no CUDA GPU is usable: {why}; use device = \"auto\" \
             or \"cpu\" to run on the CPU"
        )),
        (_, Err(why)) => Ok(DeviceDecision {
            device: Device::Cpu,
            reason: format!("CPU, because no CUDA GPU is usable: {why}"),
        }),
    }
}

/// The first GPU's name, or why CUDA cannot be used.
pub fn cuda_probe() -> Result<String, String> {
    #[cfg(feature = "cuda")]
    return driver::first_device_name();
    #[cfg(not(feature = "cuda"))]
    Err("this binary was built without the `cuda` feature".into())
}

/// The CUDA backend (f32, TF32 tensor cores where the card has them).
#[cfg(feature = "cuda")]
pub type CudaBackend = burn::backend::Cuda;

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

    #[test]
    fn cpu_is_always_available_says_why_and_never_probes_cuda() {
        let d = choose_with(DeviceChoice::Cpu, || panic!("the CUDA probe ran")).unwrap();
        assert_eq!(d.device, Device::Cpu);
        assert!(d.reason.contains("configured"));
    }

    #[test]
    fn auto_and_cuda_follow_the_probe() {
        let found = || Ok::<_, String>("Test GPU".to_string());
        let missing = || Err::<String, _>("no driver".to_string());
        for choice in [DeviceChoice::Auto, DeviceChoice::Cuda] {
            let d = choose_with(choice, found).unwrap();
            assert_eq!(d.device, Device::Cuda(0));
            assert!(d.reason.contains("Test GPU"), "{}", d.reason);
        }
        let auto = choose_with(DeviceChoice::Auto, missing).unwrap();
        assert_eq!(auto.device, Device::Cpu);
        assert!(auto.reason.contains("no driver"), "{}", auto.reason);
        let err = choose_with(DeviceChoice::Cuda, missing).unwrap_err();
        assert!(err.contains("no CUDA GPU is usable: no driver"), "{err}");
    }

    #[test]
    fn this_machine_agrees_with_its_probe() {
        match cuda_probe() {
            Ok(_) => assert!(matches!(
                choose(DeviceChoice::Auto).unwrap().device,
                Device::Cuda(0)
            )),
            Err(why) => {
                let auto = choose(DeviceChoice::Auto).unwrap();
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
                .contains("auto, cuda or cpu")
        );
    }
}
