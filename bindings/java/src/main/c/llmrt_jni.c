/*
 * The JNI glue of the llmrt Java binding: each `dev.llmrt.Native` method calls one C API
 * function. Strings cross as UTF-8 byte arrays (never JNI's "modified UTF-8"), handles as
 * jlong. Every llmrt_error becomes a thrown dev.llmrt.LlmrtException(code, message bytes).
 * The Java side (dev.llmrt.Engine) makes sure a handle is never used after it is freed.
 *
 * Built into libllmrt_jni.so by bindings/java/Makefile, linked against libllmrt.so.0.
 */
#include <jni.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "llmrt.h"

#define JNI_FN(name) JNICALL Java_dev_llmrt_Native_##name

static jclass cls_exception;   /* dev.llmrt.LlmrtException */
static jmethodID ctor_exception;
static jclass cls_event;       /* dev.llmrt.Event */
static jmethodID ctor_event;
static jclass cls_native;      /* dev.llmrt.Native */
static jmethodID mid_progress; /* Native.progress(ProgressListener, float, byte[]) */
static jclass cls_oom;         /* java.lang.OutOfMemoryError */

static jclass global_class(JNIEnv *env, const char *name) {
    jclass local = (*env)->FindClass(env, name);
    if (!local) return NULL;
    jclass global = (jclass)(*env)->NewGlobalRef(env, local);
    (*env)->DeleteLocalRef(env, local);
    return global;
}

JNIEXPORT jint JNICALL JNI_OnLoad(JavaVM *vm, void *reserved) {
    (void)reserved;
    JNIEnv *env = NULL;
    if ((*vm)->GetEnv(vm, (void **)&env, JNI_VERSION_1_8) != JNI_OK) return JNI_ERR;
    if (!(cls_exception = global_class(env, "dev/llmrt/LlmrtException"))) return JNI_ERR;
    if (!(ctor_exception = (*env)->GetMethodID(env, cls_exception, "<init>", "(I[B)V")))
        return JNI_ERR;
    if (!(cls_event = global_class(env, "dev/llmrt/Event"))) return JNI_ERR;
    if (!(ctor_event = (*env)->GetMethodID(env, cls_event, "<init>", "(JJI[I[BIZIZJJJ[BI[BZD[I[F[I[F[B[B)V")))
        return JNI_ERR;
    if (!(cls_native = global_class(env, "dev/llmrt/Native"))) return JNI_ERR;
    if (!(mid_progress = (*env)->GetStaticMethodID(env, cls_native, "progress",
                                                   "(Ldev/llmrt/ProgressListener;F[B)Z")))
        return JNI_ERR;
    if (!(cls_oom = global_class(env, "java/lang/OutOfMemoryError"))) return JNI_ERR;
    return JNI_VERSION_1_8;
}

JNIEXPORT void JNICALL JNI_OnUnload(JavaVM *vm, void *reserved) {
    (void)reserved;
    JNIEnv *env = NULL;
    if ((*vm)->GetEnv(vm, (void **)&env, JNI_VERSION_1_8) != JNI_OK) return;
    (*env)->DeleteGlobalRef(env, cls_exception);
    (*env)->DeleteGlobalRef(env, cls_event);
    (*env)->DeleteGlobalRef(env, cls_native);
    (*env)->DeleteGlobalRef(env, cls_oom);
}

static llmrt_engine *engine_of(jlong h) { return (llmrt_engine *)(intptr_t)h; }

/* A Java byte[] of `len` bytes of `s`; NULL with an exception pending if out of memory. */
static jbyteArray bytes(JNIEnv *env, const char *s, size_t len) {
    if (len > (size_t)INT32_MAX) {
        (*env)->ThrowNew(env, cls_oom, "llmrt: string too long for a Java array");
        return NULL;
    }
    jbyteArray a = (*env)->NewByteArray(env, (jsize)len);
    if (a && len) (*env)->SetByteArrayRegion(env, a, 0, (jsize)len, (const jbyte *)s);
    return a;
}

/* Throws the error as an LlmrtException and frees it. Returns true if there was one. */
static bool throw_error(JNIEnv *env, llmrt_error *err) {
    if (!err) return false;
    const char *msg = llmrt_error_message(err);
    jint code = (jint)llmrt_error_code(err);
    jbyteArray m = bytes(env, msg, strlen(msg));
    llmrt_error_free(err);
    if (!m) return true; /* OutOfMemoryError pending */
    jobject ex = (*env)->NewObject(env, cls_exception, ctor_exception, code, m);
    (*env)->DeleteLocalRef(env, m);
    if (ex) {
        (*env)->Throw(env, (jthrowable)ex);
        (*env)->DeleteLocalRef(env, ex);
    }
    return true;
}

/* A NUL-terminated copy of a byte[] the Java side NUL-terminated (NULL for null, or with
 * an exception pending if out of memory). The caller frees it. */
static char *c_string(JNIEnv *env, jbyteArray a) {
    if (!a) return NULL;
    jsize n = (*env)->GetArrayLength(env, a);
    char *s = malloc((size_t)n + 1);
    if (!s) {
        (*env)->ThrowNew(env, cls_oom, "llmrt: out of memory");
        return NULL;
    }
    (*env)->GetByteArrayRegion(env, a, 0, n, (jbyte *)s);
    s[n] = 0;
    return s;
}

/* A copy of an int[] as uint32_t (the ids' bits as they are: a negative id becomes one
 * outside the vocabulary, which the library rejects). `*n` receives the length. */
static uint32_t *u32_array(JNIEnv *env, jintArray a, size_t *n) {
    *n = 0;
    if (!a) return NULL;
    jsize len = (*env)->GetArrayLength(env, a);
    uint32_t *ids = malloc(len ? (size_t)len * sizeof *ids : 1);
    if (!ids) {
        (*env)->ThrowNew(env, cls_oom, "llmrt: out of memory");
        return NULL;
    }
    (*env)->GetIntArrayRegion(env, a, 0, len, (jint *)ids);
    *n = (size_t)len;
    return ids;
}

/* ----------------------------------------------------------------- library --- */

JNIEXPORT jint JNI_FN(headerAbiVersion)(JNIEnv *env, jclass cls) {
    (void)env, (void)cls;
    return LLMRT_ABI_VERSION;
}

JNIEXPORT jint JNI_FN(abiVersion)(JNIEnv *env, jclass cls) {
    (void)env, (void)cls;
    return (jint)llmrt_abi_version();
}

JNIEXPORT jbyteArray JNI_FN(version)(JNIEnv *env, jclass cls) {
    (void)cls;
    const char *v = llmrt_version();
    return bytes(env, v, strlen(v));
}

JNIEXPORT jbyteArray JNI_FN(capabilities)(JNIEnv *env, jclass cls) {
    (void)cls;
    const char *c = llmrt_capabilities();
    return bytes(env, c, strlen(c));
}

JNIEXPORT jbyteArray JNI_FN(errorCodeName)(JNIEnv *env, jclass cls, jint code) {
    (void)cls;
    const char *n = llmrt_error_code_name(code);
    return bytes(env, n, strlen(n));
}

/* ------------------------------------------------------------------ engine --- */

typedef struct {
    JNIEnv *env;
    jobject listener;
    jthrowable thrown; /* what the listener threw (a local ref), if anything */
} progress_ctx;

/* Runs on the thread that called llmrt_engine_new (the one in engineNew), so `env` is its. */
static bool on_progress(void *user_data, float progress, const char *stage) {
    progress_ctx *ctx = user_data;
    JNIEnv *env = ctx->env;
    if (ctx->thrown) return false;
    jbyteArray s = bytes(env, stage ? stage : "", stage ? strlen(stage) : 0);
    jboolean go_on = JNI_FALSE;
    if (s) {
        go_on = (*env)->CallStaticBooleanMethod(env, cls_native, mid_progress, ctx->listener,
                                                (jfloat)progress, s);
        (*env)->DeleteLocalRef(env, s);
    }
    if ((*env)->ExceptionCheck(env)) {
        ctx->thrown = (*env)->ExceptionOccurred(env);
        (*env)->ExceptionClear(env);
        return false;
    }
    return go_on == JNI_TRUE;
}

JNIEXPORT jlong JNI_FN(engineNew)(JNIEnv *env, jclass cls, jbyteArray config_json,
                                  jobject listener) {
    (void)cls;
    char *config = c_string(env, config_json);
    if ((*env)->ExceptionCheck(env)) return 0;
    progress_ctx ctx = {env, listener, NULL};
    llmrt_engine *engine = NULL;
    llmrt_error *err = llmrt_engine_new(config, listener ? on_progress : NULL, &ctx, &engine);
    free(config);
    if (ctx.thrown) {
        /* The listener threw: the load was cancelled; rethrow what it threw. */
        llmrt_error_free(err);
        llmrt_engine_free(engine);
        (*env)->Throw(env, ctx.thrown);
        (*env)->DeleteLocalRef(env, ctx.thrown);
        return 0;
    }
    if (throw_error(env, err)) return 0;
    return (jlong)(intptr_t)engine;
}

JNIEXPORT void JNI_FN(engineStop)(JNIEnv *env, jclass cls, jlong h) {
    (void)cls;
    throw_error(env, llmrt_engine_stop(engine_of(h)));
}

JNIEXPORT void JNI_FN(engineFree)(JNIEnv *env, jclass cls, jlong h) {
    (void)env, (void)cls;
    llmrt_engine_free(engine_of(h));
}

JNIEXPORT jlong JNI_FN(submit)(JNIEnv *env, jclass cls, jlong h, jbyteArray request_json,
                               jlong user_tag) {
    (void)cls;
    char *json = c_string(env, request_json);
    if ((*env)->ExceptionCheck(env)) return 0;
    uint64_t id = 0;
    llmrt_error *err = llmrt_engine_submit(engine_of(h), json, (uint64_t)user_tag, &id);
    free(json);
    if (throw_error(env, err)) return 0;
    return (jlong)id;
}

JNIEXPORT jlong JNI_FN(submitTokens)(JNIEnv *env, jclass cls, jlong h, jintArray prompt,
                                     jint max_tokens, jfloat temperature, jfloat top_p,
                                     jint top_k, jlong seed, jint flags, jlong user_tag) {
    (void)cls;
    size_t n = 0;
    uint32_t *ids = u32_array(env, prompt, &n);
    if ((*env)->ExceptionCheck(env)) return 0;
    uint64_t id = 0;
    llmrt_error *err = llmrt_engine_submit_tokens(engine_of(h), ids, n, max_tokens, temperature,
                                                  top_p, top_k, seed, (uint32_t)flags,
                                                  (uint64_t)user_tag, &id);
    free(ids);
    if (throw_error(env, err)) return 0;
    return (jlong)id;
}

JNIEXPORT void JNI_FN(abort)(JNIEnv *env, jclass cls, jlong h, jlong request_id) {
    (void)cls;
    throw_error(env, llmrt_engine_abort(engine_of(h), (uint64_t)request_id));
}

/* The accessors of one logprob list of an event: the generated tokens' or the prompt's
 * (both sets of C functions have the same shapes). */
typedef struct {
    size_t (*count)(const llmrt_events *, size_t);
    bool (*entry)(const llmrt_events *, size_t, size_t, uint32_t *, float *, uint32_t *);
    size_t (*top_count)(const llmrt_events *, size_t, size_t);
    bool (*top)(const llmrt_events *, size_t, size_t, size_t, uint32_t *, float *, uint32_t *);
} logprob_accessors;

static const logprob_accessors token_logprobs = {
    llmrt_event_logprobs_count, llmrt_event_logprob, llmrt_event_top_logprobs_count,
    llmrt_event_top_logprob};
static const logprob_accessors prompt_logprobs = {
    llmrt_event_prompt_logprobs_count, llmrt_event_prompt_logprob,
    llmrt_event_prompt_top_logprobs_count, llmrt_event_prompt_top_logprob};

/* One logprob list of event `i`, packed into two arrays that Event unpacks (see
 * Event.unpackLogprobs): per entry, ints [token, rank, top count, (top token, top rank)
 * per alternative] and floats [logprob, top logprob per alternative]. Both stay NULL when
 * the list is empty; false with an exception pending when out of memory. The caller
 * deletes the local refs. */
static bool pack_logprobs(JNIEnv *env, const llmrt_events *ev, size_t i,
                          const logprob_accessors *acc, jintArray *ints_out,
                          jfloatArray *floats_out) {
    *ints_out = NULL;
    *floats_out = NULL;
    size_t n = acc->count(ev, i);
    if (!n) return true;
    size_t num_ints = 0, num_floats = 0;
    for (size_t pos = 0; pos < n; pos++) {
        size_t top = acc->top_count(ev, i, pos);
        num_ints += 3 + 2 * top;
        num_floats += 1 + top;
    }
    if (num_ints > (size_t)INT32_MAX) {
        (*env)->ThrowNew(env, cls_oom, "llmrt: too many logprobs for a Java array");
        return false;
    }
    jint *ints = malloc(num_ints * sizeof *ints);
    jfloat *floats = malloc(num_floats * sizeof *floats);
    bool ok = ints && floats;
    if (!ok) (*env)->ThrowNew(env, cls_oom, "llmrt: out of memory");
    size_t ni = 0, nf = 0;
    for (size_t pos = 0; ok && pos < n; pos++) {
        uint32_t token = 0, rank = 0;
        float logprob = 0;
        acc->entry(ev, i, pos, &token, &logprob, &rank);
        size_t top = acc->top_count(ev, i, pos);
        ints[ni++] = (jint)token;
        ints[ni++] = (jint)rank;
        ints[ni++] = (jint)top;
        floats[nf++] = logprob;
        for (size_t k = 0; k < top; k++) {
            token = rank = 0;
            logprob = 0;
            acc->top(ev, i, pos, k, &token, &logprob, &rank);
            ints[ni++] = (jint)token;
            ints[ni++] = (jint)rank;
            floats[nf++] = logprob;
        }
    }
    if (ok && (*ints_out = (*env)->NewIntArray(env, (jsize)ni)) != NULL)
        (*env)->SetIntArrayRegion(env, *ints_out, 0, (jsize)ni, ints);
    if (ok && *ints_out && (*floats_out = (*env)->NewFloatArray(env, (jsize)nf)) != NULL)
        (*env)->SetFloatArrayRegion(env, *floats_out, 0, (jsize)nf, floats);
    free(ints);
    free(floats);
    return ok && *ints_out && *floats_out;
}

/* A NUL-terminated string the batch owns as a byte[], or NULL for NULL or "" (when
 * `empty_is_null`). Sets *failed when out of memory (an exception is pending); does
 * nothing once *failed is set. */
static jbyteArray optional_bytes(JNIEnv *env, const char *s, bool empty_is_null, bool *failed) {
    if (*failed || !s || (empty_is_null && !*s)) return NULL;
    jbyteArray a = bytes(env, s, strlen(s));
    if (!a) *failed = true;
    return a;
}

/* One event of a batch as a dev.llmrt.Event (a local ref), or NULL with an exception. */
static jobject make_event(JNIEnv *env, const llmrt_events *ev, size_t i) {
    /* Room for every local ref below; popped (all but the result) on the way out. */
    if ((*env)->PushLocalFrame(env, 16) != 0) return NULL;
    size_t n = 0, len = 0;
    const uint32_t *ids = llmrt_event_token_ids(ev, i, &n);
    const char *text = llmrt_event_text(ev, i, &len);
    uint32_t stop_token = 0;
    bool has_stop = llmrt_event_stop_token_id(ev, i, &stop_token);
    uint64_t usage[3] = {0, 0, 0};
    bool has_usage = llmrt_event_usage(ev, i, &usage[0], &usage[1], &usage[2]);
    double cumulative = 0;
    bool has_cumulative = llmrt_event_cumulative_logprob(ev, i, &cumulative);

    jobject result = NULL;
    bool failed = false;
    jintArray jids = (*env)->NewIntArray(env, (jsize)n);
    if (!jids) goto done;
    if (n) (*env)->SetIntArrayRegion(env, jids, 0, (jsize)n, (const jint *)ids);
    jbyteArray jtext = bytes(env, text, len);
    if (!jtext) goto done;
    jbyteArray jerror = optional_bytes(env, llmrt_event_error_message(ev, i), false, &failed);
    jbyteArray jstop = optional_bytes(env, llmrt_event_stop_string(ev, i), false, &failed);
    jbyteArray jreasoning = optional_bytes(env, llmrt_event_reasoning_text(ev, i), true, &failed);
    jbyteArray jtools = optional_bytes(env, llmrt_event_tool_calls_json(ev, i), false, &failed);
    if (failed) goto done;
    jintArray lp_ints, plp_ints;
    jfloatArray lp_floats, plp_floats;
    if (!pack_logprobs(env, ev, i, &token_logprobs, &lp_ints, &lp_floats)) goto done;
    if (!pack_logprobs(env, ev, i, &prompt_logprobs, &plp_ints, &plp_floats)) goto done;
    result = (*env)->NewObject(
        env, cls_event, ctor_event, (jlong)llmrt_event_request_id(ev, i),
        (jlong)llmrt_event_user_tag(ev, i), (jint)llmrt_event_kind(ev, i), jids, jtext,
        (jint)llmrt_event_finish_reason(ev, i), (jboolean)has_stop, (jint)stop_token,
        (jboolean)has_usage, (jlong)usage[0], (jlong)usage[1], (jlong)usage[2], jerror,
        (jint)llmrt_event_index(ev, i), jstop, (jboolean)has_cumulative, (jdouble)cumulative,
        lp_ints, lp_floats, plp_ints, plp_floats, jreasoning, jtools);
done:
    return (*env)->PopLocalFrame(env, result);
}

JNIEXPORT jobjectArray JNI_FN(poll)(JNIEnv *env, jclass cls, jlong h, jint max_events,
                                    jint timeout_ms) {
    (void)cls;
    llmrt_events *ev = NULL;
    llmrt_error *err = llmrt_engine_poll(engine_of(h), max_events > 0 ? (size_t)max_events : 0,
                                         timeout_ms, &ev);
    if (throw_error(env, err)) return NULL;
    size_t count = llmrt_events_count(ev);
    jobjectArray out = (*env)->NewObjectArray(env, (jsize)count, cls_event, NULL);
    for (size_t i = 0; out && i < count; i++) {
        jobject e = make_event(env, ev, i);
        if (!e) {
            /* Out of memory: the batch's events are lost; the exception says so. */
            (*env)->DeleteLocalRef(env, out);
            out = NULL;
            break;
        }
        (*env)->SetObjectArrayElement(env, out, (jsize)i, e);
        (*env)->DeleteLocalRef(env, e);
    }
    llmrt_events_free(ev);
    return out;
}

/* --------------------------------------------------------------- utilities --- */

/* A string the caller frees with llmrt_string_free, as a byte[] (freed here). */
static jbyteArray owned_string(JNIEnv *env, llmrt_error *err, char *s, size_t len) {
    if (throw_error(env, err)) return NULL;
    jbyteArray a = bytes(env, s, len);
    llmrt_string_free(s);
    return a;
}

JNIEXPORT jbyteArray JNI_FN(metricsJson)(JNIEnv *env, jclass cls, jlong h) {
    (void)cls;
    char *s = NULL;
    llmrt_error *err = llmrt_engine_metrics_json(engine_of(h), &s);
    return owned_string(env, err, s, s ? strlen(s) : 0);
}

JNIEXPORT jbyteArray JNI_FN(metricsPrometheus)(JNIEnv *env, jclass cls, jlong h) {
    (void)cls;
    char *s = NULL;
    llmrt_error *err = llmrt_engine_metrics_prometheus(engine_of(h), &s);
    return owned_string(env, err, s, s ? strlen(s) : 0);
}

JNIEXPORT jbyteArray JNI_FN(modelInfo)(JNIEnv *env, jclass cls, jlong h) {
    (void)cls;
    char *s = NULL;
    llmrt_error *err = llmrt_engine_model_info(engine_of(h), &s);
    return owned_string(env, err, s, s ? strlen(s) : 0);
}

JNIEXPORT jintArray JNI_FN(tokenize)(JNIEnv *env, jclass cls, jlong h, jbyteArray text,
                                     jboolean add_special_tokens) {
    (void)cls;
    jsize len = text ? (*env)->GetArrayLength(env, text) : 0;
    char *buf = malloc(len ? (size_t)len : 1);
    if (!buf) {
        (*env)->ThrowNew(env, cls_oom, "llmrt: out of memory");
        return NULL;
    }
    if (len) (*env)->GetByteArrayRegion(env, text, 0, len, (jbyte *)buf);
    uint32_t *ids = NULL;
    size_t n = 0;
    llmrt_error *err = llmrt_tokenize(engine_of(h), buf, (size_t)len,
                                      add_special_tokens == JNI_TRUE, &ids, &n);
    free(buf);
    if (throw_error(env, err)) return NULL;
    jintArray out = NULL;
    if (n > (size_t)INT32_MAX) {
        (*env)->ThrowNew(env, cls_oom, "llmrt: too many tokens for a Java array");
    } else if ((out = (*env)->NewIntArray(env, (jsize)n)) && n) {
        (*env)->SetIntArrayRegion(env, out, 0, (jsize)n, (const jint *)ids);
    }
    llmrt_tokens_free(ids);
    return out;
}

JNIEXPORT jbyteArray JNI_FN(detokenize)(JNIEnv *env, jclass cls, jlong h, jintArray token_ids,
                                        jboolean skip_special_tokens) {
    (void)cls;
    size_t n = 0;
    uint32_t *ids = u32_array(env, token_ids, &n);
    if ((*env)->ExceptionCheck(env)) return NULL;
    char *text = NULL;
    size_t len = 0;
    llmrt_error *err = llmrt_detokenize(engine_of(h), ids, n, skip_special_tokens == JNI_TRUE,
                                        &text, &len);
    free(ids);
    return owned_string(env, err, text, len);
}

JNIEXPORT jbyteArray JNI_FN(applyChatTemplate)(JNIEnv *env, jclass cls, jlong h,
                                               jbyteArray chat_json) {
    (void)cls;
    char *json = c_string(env, chat_json);
    if ((*env)->ExceptionCheck(env)) return NULL;
    char *text = NULL;
    size_t len = 0;
    llmrt_error *err = llmrt_apply_chat_template(engine_of(h), json, &text, &len);
    free(json);
    return owned_string(env, err, text, len);
}
