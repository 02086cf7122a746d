from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AgentMessage(_message.Message):
    __slots__ = ("register", "report")
    REGISTER_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    register: Register
    report: Report
    def __init__(self, register: _Optional[_Union[Register, _Mapping]] = ..., report: _Optional[_Union[Report, _Mapping]] = ...) -> None: ...

class Register(_message.Message):
    __slots__ = ("region", "credential", "agent_version", "gpus", "agent_id")
    REGION_FIELD_NUMBER: _ClassVar[int]
    CREDENTIAL_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    region: str
    credential: str
    agent_version: str
    gpus: _containers.RepeatedCompositeFieldContainer[GpuInfo]
    agent_id: str
    def __init__(self, region: _Optional[str] = ..., credential: _Optional[str] = ..., agent_version: _Optional[str] = ..., gpus: _Optional[_Iterable[_Union[GpuInfo, _Mapping]]] = ..., agent_id: _Optional[str] = ...) -> None: ...

class GpuInfo(_message.Message):
    __slots__ = ("index", "uuid", "name", "memory_total_bytes")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    UUID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    MEMORY_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    index: int
    uuid: str
    name: str
    memory_total_bytes: int
    def __init__(self, index: _Optional[int] = ..., uuid: _Optional[str] = ..., name: _Optional[str] = ..., memory_total_bytes: _Optional[int] = ...) -> None: ...

class Report(_message.Message):
    __slots__ = ("seq", "sent_at", "gpus", "workers")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    SENT_AT_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    seq: int
    sent_at: float
    gpus: _containers.RepeatedCompositeFieldContainer[GpuStatus]
    workers: _containers.RepeatedCompositeFieldContainer[WorkerStatus]
    def __init__(self, seq: _Optional[int] = ..., sent_at: _Optional[float] = ..., gpus: _Optional[_Iterable[_Union[GpuStatus, _Mapping]]] = ..., workers: _Optional[_Iterable[_Union[WorkerStatus, _Mapping]]] = ...) -> None: ...

class XidEvent(_message.Message):
    __slots__ = ("code", "at")
    CODE_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    code: int
    at: float
    def __init__(self, code: _Optional[int] = ..., at: _Optional[float] = ...) -> None: ...

class GpuStatus(_message.Message):
    __slots__ = ("index", "utilization", "memory_used_bytes", "memory_total_bytes", "temperature_c", "power_w", "ecc_corrected", "ecc_uncorrected", "xid_events", "throttle_reasons", "hung", "recent_xids")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    UTILIZATION_FIELD_NUMBER: _ClassVar[int]
    MEMORY_USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_C_FIELD_NUMBER: _ClassVar[int]
    POWER_W_FIELD_NUMBER: _ClassVar[int]
    ECC_CORRECTED_FIELD_NUMBER: _ClassVar[int]
    ECC_UNCORRECTED_FIELD_NUMBER: _ClassVar[int]
    XID_EVENTS_FIELD_NUMBER: _ClassVar[int]
    THROTTLE_REASONS_FIELD_NUMBER: _ClassVar[int]
    HUNG_FIELD_NUMBER: _ClassVar[int]
    RECENT_XIDS_FIELD_NUMBER: _ClassVar[int]
    index: int
    utilization: float
    memory_used_bytes: int
    memory_total_bytes: int
    temperature_c: float
    power_w: float
    ecc_corrected: int
    ecc_uncorrected: int
    xid_events: _containers.RepeatedCompositeFieldContainer[XidEvent]
    throttle_reasons: _containers.RepeatedScalarFieldContainer[str]
    hung: bool
    recent_xids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, index: _Optional[int] = ..., utilization: _Optional[float] = ..., memory_used_bytes: _Optional[int] = ..., memory_total_bytes: _Optional[int] = ..., temperature_c: _Optional[float] = ..., power_w: _Optional[float] = ..., ecc_corrected: _Optional[int] = ..., ecc_uncorrected: _Optional[int] = ..., xid_events: _Optional[_Iterable[_Union[XidEvent, _Mapping]]] = ..., throttle_reasons: _Optional[_Iterable[str]] = ..., hung: _Optional[bool] = ..., recent_xids: _Optional[_Iterable[int]] = ...) -> None: ...

class WorkerStatus(_message.Message):
    __slots__ = ("worker_id", "endpoint", "grpc_endpoint", "models", "ready", "queue_depth", "in_flight", "throughput_rps", "latency_p50_ms", "latency_p99_ms", "gpu_indices", "capacity_rps", "draining", "error", "running_seqs", "waiting_seqs", "kv_blocks_used", "kv_blocks_free", "kv_block_size", "prefill_tokens_per_s", "decode_tokens_per_s", "prefix_hit_rate")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    GRPC_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    THROUGHPUT_RPS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P50_MS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P99_MS_FIELD_NUMBER: _ClassVar[int]
    GPU_INDICES_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_RPS_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    RUNNING_SEQS_FIELD_NUMBER: _ClassVar[int]
    WAITING_SEQS_FIELD_NUMBER: _ClassVar[int]
    KV_BLOCKS_USED_FIELD_NUMBER: _ClassVar[int]
    KV_BLOCKS_FREE_FIELD_NUMBER: _ClassVar[int]
    KV_BLOCK_SIZE_FIELD_NUMBER: _ClassVar[int]
    PREFILL_TOKENS_PER_S_FIELD_NUMBER: _ClassVar[int]
    DECODE_TOKENS_PER_S_FIELD_NUMBER: _ClassVar[int]
    PREFIX_HIT_RATE_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    endpoint: str
    grpc_endpoint: str
    models: _containers.RepeatedScalarFieldContainer[str]
    ready: bool
    queue_depth: int
    in_flight: int
    throughput_rps: float
    latency_p50_ms: float
    latency_p99_ms: float
    gpu_indices: _containers.RepeatedScalarFieldContainer[int]
    capacity_rps: float
    draining: bool
    error: str
    running_seqs: int
    waiting_seqs: int
    kv_blocks_used: int
    kv_blocks_free: int
    kv_block_size: int
    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    prefix_hit_rate: float
    def __init__(self, worker_id: _Optional[str] = ..., endpoint: _Optional[str] = ..., grpc_endpoint: _Optional[str] = ..., models: _Optional[_Iterable[str]] = ..., ready: _Optional[bool] = ..., queue_depth: _Optional[int] = ..., in_flight: _Optional[int] = ..., throughput_rps: _Optional[float] = ..., latency_p50_ms: _Optional[float] = ..., latency_p99_ms: _Optional[float] = ..., gpu_indices: _Optional[_Iterable[int]] = ..., capacity_rps: _Optional[float] = ..., draining: _Optional[bool] = ..., error: _Optional[str] = ..., running_seqs: _Optional[int] = ..., waiting_seqs: _Optional[int] = ..., kv_blocks_used: _Optional[int] = ..., kv_blocks_free: _Optional[int] = ..., kv_block_size: _Optional[int] = ..., prefill_tokens_per_s: _Optional[float] = ..., decode_tokens_per_s: _Optional[float] = ..., prefix_hit_rate: _Optional[float] = ...) -> None: ...

class ControlMessage(_message.Message):
    __slots__ = ("directives",)
    DIRECTIVES_FIELD_NUMBER: _ClassVar[int]
    directives: Directives
    def __init__(self, directives: _Optional[_Union[Directives, _Mapping]] = ...) -> None: ...

class Directives(_message.Message):
    __slots__ = ("generation", "report_interval_s", "workers", "config")
    class ConfigEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    REPORT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    generation: int
    report_interval_s: float
    workers: _containers.RepeatedCompositeFieldContainer[DesiredWorker]
    config: _containers.ScalarMap[str, str]
    def __init__(self, generation: _Optional[int] = ..., report_interval_s: _Optional[float] = ..., workers: _Optional[_Iterable[_Union[DesiredWorker, _Mapping]]] = ..., config: _Optional[_Mapping[str, str]] = ...) -> None: ...

class DesiredWorker(_message.Message):
    __slots__ = ("model", "version", "variant", "artifact_url", "artifact_sha256", "replicas", "reserve")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_URL_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_SHA256_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    RESERVE_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    variant: str
    artifact_url: str
    artifact_sha256: str
    replicas: int
    reserve: bool
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., variant: _Optional[str] = ..., artifact_url: _Optional[str] = ..., artifact_sha256: _Optional[str] = ..., replicas: _Optional[int] = ..., reserve: _Optional[bool] = ...) -> None: ...
