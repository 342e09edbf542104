package dev.llmrt;

import java.nio.charset.StandardCharsets;

/**
 * The JNI glue (src/main/c/llmrt_jni.c): one static method per C call. Handles are the C
 * pointers as longs; {@link Engine} guards them. Strings cross as UTF-8 byte arrays (the glue
 * NUL-terminates C strings), never as JNI's modified UTF-8.
 *
 * <p>The glue is {@code libllmrt_jni.so}, found through {@code java.library.path}, or at
 * the path in the system property {@code llmrt.jni.library}; it loads
 * {@code libllmrt.so.0} from its own folder (its rpath is {@code $ORIGIN}) or from the
 * system's library path.
 */
final class Native {
    private Native() {
    }

    /** The ABI version this binding was written for ({@code LLMRT_ABI_VERSION}). */
    static final int ABI_VERSION = 0;

    static {
        String path = System.getProperty("llmrt.jni.library");
        if (path != null && !path.isEmpty()) {
            System.load(path);
        } else {
            System.loadLibrary("llmrt_jni");
        }
        int header = headerAbiVersion();
        int library = abiVersion();
        if (header != ABI_VERSION || library != ABI_VERSION) {
            throw new UnsatisfiedLinkError("llmrt ABI mismatch: the Java binding is for ABI "
                    + ABI_VERSION + ", its JNI glue was built for " + header
                    + ", the loaded libllmrt for " + library);
        }
    }

    /** Makes sure the class (and so the libraries) is loaded. */
    static void load() {
    }

    /**
     * A Java string as UTF-8 for a C string parameter (the glue NUL-terminates it). A string
     * with a NUL character cannot be one: that is an INVALID_ARGUMENT, as in C.
     */
    static byte[] cString(String s, String what) {
        if (s.indexOf('\0') >= 0) {
            throw new LlmrtException(Status.INVALID_ARGUMENT, what + " contains a NUL character");
        }
        return s.getBytes(StandardCharsets.UTF_8);
    }

    static String utf8(byte[] b) {
        return new String(b, StandardCharsets.UTF_8);
    }

    /** Called by the glue during a load; returns the listener's answer. */
    static boolean progress(ProgressListener listener, float progress, byte[] stage) {
        return listener.onProgress(progress, utf8(stage));
    }

    static native int headerAbiVersion();

    static native int abiVersion();

    static native byte[] version();

    static native byte[] capabilities();

    static native byte[] errorCodeName(int code);

    /** {@code llmrt_engine_new}; {@code listener} may be null. */
    static native long engineNew(byte[] configJson, ProgressListener listener);

    static native void engineStop(long engine);

    static native void engineFree(long engine);

    static native long submit(long engine, byte[] requestJson, long userTag);

    static native long submitTokens(long engine, int[] promptTokenIds, int maxTokens,
            float temperature, float topP, int topK, long seed, int flags, long userTag);

    static native void abort(long engine, long requestId);

    /** {@code llmrt_engine_poll}; the batch comes as events, freed before returning. */
    static native Event[] poll(long engine, int maxEvents, int timeoutMs);

    static native byte[] metricsJson(long engine);

    static native byte[] metricsPrometheus(long engine);

    static native byte[] modelInfo(long engine);

    static native int[] tokenize(long engine, byte[] text, boolean addSpecialTokens);

    static native byte[] detokenize(long engine, int[] tokenIds, boolean skipSpecialTokens);

    static native byte[] applyChatTemplate(long engine, byte[] chatJson);
}
