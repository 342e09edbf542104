package dev.llmrt;

/** What the loaded library is: its version, ABI version and capabilities. */
public final class Llmrt {
    private Llmrt() {
    }

    /** The ABI version this binding was written for; the loaded library's must equal it. */
    public static final int ABI_VERSION = Native.ABI_VERSION;

    /** The loaded library's ABI version ({@code llmrt_abi_version}). */
    public static int abiVersion() {
        return Native.abiVersion();
    }

    /** The loaded library's version, e.g. "0.1.0". */
    public static String version() {
        return Native.utf8(Native.version());
    }

    /**
     * What this build of the library can do, as a JSON object: {@code architectures},
     * {@code weight_formats}, {@code backends}, {@code cpu_features}, {@code features}, ...
     */
    public static String capabilitiesJson() {
        return Native.utf8(Native.capabilities());
    }

    /** The library's name for a status code ({@code llmrt_error_code_name}). */
    public static String errorCodeName(int code) {
        return Native.utf8(Native.errorCodeName(code));
    }
}
