from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class EnrollRequest(_message.Message):
    __slots__ = ("region", "credential", "csr_pem", "role", "hosts")
    REGION_FIELD_NUMBER: _ClassVar[int]
    CREDENTIAL_FIELD_NUMBER: _ClassVar[int]
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    HOSTS_FIELD_NUMBER: _ClassVar[int]
    region: str
    credential: str
    csr_pem: bytes
    role: str
    hosts: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, region: _Optional[str] = ..., credential: _Optional[str] = ..., csr_pem: _Optional[bytes] = ..., role: _Optional[str] = ..., hosts: _Optional[_Iterable[str]] = ...) -> None: ...

class EnrollReply(_message.Message):
    __slots__ = ("cert_pem", "ca_pem", "not_after")
    CERT_PEM_FIELD_NUMBER: _ClassVar[int]
    CA_PEM_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_FIELD_NUMBER: _ClassVar[int]
    cert_pem: bytes
    ca_pem: bytes
    not_after: float
    def __init__(self, cert_pem: _Optional[bytes] = ..., ca_pem: _Optional[bytes] = ..., not_after: _Optional[float] = ...) -> None: ...
