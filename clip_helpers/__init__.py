"""clip_helpers: the tested core of clip-kit."""
import warnings

# Noise from the libraries, not from the kit: clip imports pkg_resources, and loads OpenAI's archives with
# torch.jit.load; both are deprecated upstream. Hiding them keeps the notebooks' output about the lesson.
warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
warnings.filterwarnings("ignore", message="`torch.jit.load` is deprecated")
