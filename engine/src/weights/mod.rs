//! Reading weight files (safetensors, legacy PyTorch `.pth`) and handing out `VarBuilder`s.
