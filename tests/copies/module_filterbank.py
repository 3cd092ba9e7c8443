"""Written for librosa < 0.10: the filterbank built at import with positional arguments, num_mels ignored."""
import torch
from librosa.filters import mel as librosa_mel_fn

MEL_BASIS = torch.from_numpy(librosa_mel_fn(22050, 1024, 80, 0.0, None))


def spec_to_mel_torch(spec, n_fft, num_mels, sampling_rate, fmin, fmax):
    return torch.log(torch.clamp(torch.matmul(MEL_BASIS.type_as(spec), spec), min=1e-5))
