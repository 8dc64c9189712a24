"""Errors raised by the JIT. Each names the uri and the files a user needs to look at."""


class JitError(RuntimeError):
    """Base class of every JIT error."""


class JitCompileError(JitError):
    """A compiler rejected a rendered source.

    The message names the uri, the rendered source and the build log, and quotes the compiler's
    first error lines so that the cause is visible without opening the log.
    """

    def __init__(self, uri: str, source_path, log_path, log_text: str, max_lines: int = 20):
        self.uri = uri
        self.source_path = str(source_path)
        self.log_path = str(log_path)
        self.log_text = log_text
        lines = [ln for ln in log_text.splitlines() if ln.strip()]
        errors = [ln for ln in lines if "error" in ln.lower()] or lines
        excerpt = "\n".join("    " + ln for ln in errors[:max_lines])
        super().__init__(
            f"failed to compile {uri}\n  source: {self.source_path}\n  log:    {self.log_path}\n"
            f"  first errors:\n{excerpt}"
        )


class JitDisabledError(JitError):
    """FLASHKIT_DISABLE_JIT=1 is set and a specialization is not in the cache."""


class JitCacheError(JitError):
    """The cache directory cannot be created or written."""


class BackendUnavailableError(JitError):
    """A backend's toolchain (NVRTC, a CUDA driver, a C++ compiler) is missing here."""
