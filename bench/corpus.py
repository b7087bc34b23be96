"""Reproducible synthetic CT corpus.

One template CT instance is built with pydicom (about 250 elements, private blocks included); every
instance is then produced by patching fixed-width fields (UIDs, patient, dates, numbers, position)
in a copy of the template bytes. That makes ~100k instances/s per core, so a 1M corpus is a matter
of minutes (mostly disk), and STOW bodies can be generated on the fly by the load generator.

Layout of a corpus: instance i belongs to study i // (series_per_study * per_series), series
(i // per_series) % series_per_study; a study's patient, date and accession are drawn from a RNG
seeded by (seed, study). Patients have ~2 studies each; names come from a syllable pool with some
accented spellings (UTF-8, SpecificCharacterSet ISO_IR 192); study dates spread over 2008-2025.

CLI: python -m bench.corpus --size ct128 --count 50000 --out bench/corpus/ct50k
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import itertools
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, CTImageStorage, ExplicitVRLittleEndian

UID_ROOT = "1.2.826.0.1.3680043.8.498."  # pydicom's root, fine for synthetic data
SIZES: dict[str, tuple[int, int]] = {"tiny": (16, 16), "ct128": (128, 128), "ct512": (512, 512)}

_FAMILY_A = ["SMI", "JOHN", "MÜL", "GARC", "NGUY", "BRA", "DUB", "KOW", "SVEN", "ROSS", "LEF", "OKA"]
_FAMILY_B = ["TH", "SON", "LER", "ÍA", "ỄN", "NDT", "OIS", "ALSKI", "SSON", "I", "ÈVRE", "FOR", "ES", "MAN"]
_GIVEN = ["JOHN", "MARÍA", "ZOË", "LUCAS", "ANNA", "JOSÉ", "WEI", "FRANÇOIS", "EMMA", "OMAR", "ÅSA", "PIOTR"]
_PREFIXES = sorted({(a + b)[:3] for a in _FAMILY_A for b in _FAMILY_B})

DATE0 = dt.date(2008, 1, 1)
DATE_SPAN_DAYS = 18 * 365

# Fixed widths (bytes) of the patched values; even so that no padding byte moves anything.
W_NAME = 48
W_PID = 10
W_ACC = 14
W_STUDYID = 8
W_SERIESNO = 4
W_INSTNO = 6
W_Z = 10


def uid(tag: int, kind: int, n: int) -> str:
    """Fixed-length valid UID: root + 4-digit corpus tag + kind digit + 12-digit number."""
    return f"{UID_ROOT}{tag}.{kind}.{10**11 + n}"


def _pad(s: str, width: int, fill: bytes = b" ") -> bytes:
    b = s.encode("utf-8")
    if len(b) > width:
        raise ValueError(f"{s!r} longer than {width} bytes")
    return b + fill * (width - len(b))


@dataclass(frozen=True)
class Patient:
    pid: str
    name: str
    birth: str
    sex: str


@dataclass(frozen=True)
class Study:
    index: int
    uid: str
    patient: Patient
    date: str
    accession: str


@dataclass
class CorpusSpec:
    """A corpus is fully defined by these fields: same spec, same bytes."""

    name: str = "ct"
    size: str = "ct128"
    count: int = 2000
    series_per_study: int = 4
    per_series: int = 25
    studies_per_patient: int = 2
    seed: int = 1
    tag: int = 0  # UID namespace; 0 = derived from seed and size

    def __post_init__(self) -> None:
        if self.tag == 0:
            self.tag = 1000 + (self.seed * 37 + list(SIZES).index(self.size) * 1013) % 9000

    @property
    def per_study(self) -> int:
        return self.series_per_study * self.per_series

    @property
    def n_studies(self) -> int:
        return -(-self.count // self.per_study)

    @property
    def n_patients(self) -> int:
        return max(1, self.n_studies // self.studies_per_patient)

    def as_dict(self) -> dict[str, object]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


# ---------------------------------------------------------------------------------------------------
# Template
# ---------------------------------------------------------------------------------------------------

# Sentinels written into the template, located once in its bytes, then overwritten per instance.
_S_STUDY_UID = uid(9999, 1, 99_999_999_999)
_S_SERIES_UID = uid(9999, 2, 99_999_999_999)
_S_SOP_UID = uid(9999, 3, 99_999_999_999)
_S_FOR_UID = uid(9999, 4, 99_999_999_999)
_S_NAME = "ZX" * (W_NAME // 2)
_S_PID = "P9" * (W_PID // 2)
_S_ACC = "K" * W_ACC
_S_STUDYID = "J" * W_STUDYID
_S_DATE = "19010101"
_S_BIRTH = "18990202"
_S_SEX = "O "  # CS, 2 bytes
_S_SERIESNO = "7771"
_S_INSTNO = "999991"
_S_Z = "+9999.123"  # 9 chars, pydicom pads to 10 with a space; patched with 10 chars


def _seq_item(**kw: object) -> Dataset:
    d = Dataset()
    for k, v in kw.items():
        setattr(d, k, v)
    return d


def _phantom(rows: int, cols: int) -> np.ndarray:
    """A CT-like slice: body ellipse of soft tissue, a 'spine', air around, noise (seeded)."""
    rng = np.random.default_rng(12345)
    y, x = np.mgrid[0:rows, 0:cols]
    cy, cx = rows / 2, cols / 2
    img = np.full((rows, cols), -1000.0)
    body = ((x - cx) / (0.42 * cols)) ** 2 + ((y - cy) / (0.33 * rows)) ** 2 <= 1
    img[body] = 40.0
    spine = ((x - cx) / (0.05 * cols)) ** 2 + ((y - cy - 0.18 * rows) / (0.05 * rows)) ** 2 <= 1
    img[spine] = 700.0
    img += rng.normal(0, 12, size=img.shape)
    return (img + 1024).clip(0, 4095).astype("<u2")


def build_template(size: str) -> Dataset:
    rows, cols = SIZES[size]
    ds = Dataset()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = UID(_S_SOP_UID)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "DICOMD_BENCH"
    meta.SourceApplicationEntityTitle = "BENCHGEN"
    ds.file_meta = meta
    ds.preamble = b"\0" * 128

    # SOP common
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.InstanceCreationDate = _S_DATE
    ds.InstanceCreationTime = "101500"
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = _S_SOP_UID
    ds.StudyDate = _S_DATE
    ds.SeriesDate = _S_DATE
    ds.AcquisitionDate = _S_DATE
    ds.ContentDate = _S_DATE
    ds.StudyTime = "101010"
    ds.SeriesTime = "101500"
    ds.AcquisitionTime = "101512.250000"
    ds.ContentTime = "101512.500000"
    ds.AccessionNumber = _S_ACC
    ds.Modality = "CT"
    ds.Manufacturer = "DICOMD BENCH MEDICAL"
    ds.InstitutionName = "Hôpital Universitaire de Démonstration"
    ds.InstitutionAddress = "1 Rue de l'Exemple, 75000 Paris"
    ds.ReferringPhysicianName = "DUPONT^JEAN^^DR"
    ds.StationName = "CTSTATION01"
    ds.StudyDescription = "CT THORAX ABDOMEN PELVIS WITH CONTRAST"
    ds.ProcedureCodeSequence = Sequence(
        [_seq_item(CodeValue="CTTAP", CodingSchemeDesignator="L", CodeMeaning="CT Thorax Abdomen Pelvis")]
    )
    ds.SeriesDescription = "AXIAL 2.5MM SOFT TISSUE"
    ds.InstitutionalDepartmentName = "Radiologie"
    ds.PerformingPhysicianName = "MARTIN^CLAIRE"
    ds.OperatorsName = "TECH^ALEX"
    ds.ManufacturerModelName = "BenchScanner 128"
    ds.ReferencedStudySequence = Sequence(
        [_seq_item(ReferencedSOPClassUID="1.2.840.10008.3.1.2.3.1", ReferencedSOPInstanceUID=_S_STUDY_UID)]
    )
    ds.ReferencedPerformedProcedureStepSequence = Sequence(
        [_seq_item(ReferencedSOPClassUID="1.2.840.10008.3.1.2.3.3", ReferencedSOPInstanceUID=_S_FOR_UID)]
    )
    ds.DerivationDescription = ""
    ds.AnatomicRegionSequence = Sequence(
        [_seq_item(CodeValue="T-D3000", CodingSchemeDesignator="SRT", CodeMeaning="Chest")]
    )
    # Patient
    ds.PatientName = _S_NAME
    ds.PatientID = _S_PID
    ds.IssuerOfPatientID = "BENCH"
    ds.PatientBirthDate = _S_BIRTH
    ds.PatientSex = _S_SEX
    ds.OtherPatientIDs = "ALT-000001"
    ds.PatientAge = "045Y"
    ds.PatientSize = "1.75"
    ds.PatientWeight = "72.5"
    ds.EthnicGroup = ""
    ds.AdditionalPatientHistory = "Suivi post-opératoire; contrôle annuel."
    ds.PatientIdentityRemoved = "NO"
    # Clinical trial-ish / misc patient study
    ds.ContrastBolusAgent = "IOMERON 350"
    ds.ContrastBolusRoute = "IV"
    ds.ContrastBolusVolume = "90"
    ds.ContrastBolusStartTime = "101200"
    ds.ContrastBolusTotalDose = "31.5"
    ds.ContrastBolusIngredient = "IODINE"
    ds.ContrastBolusIngredientConcentration = "350"
    ds.BodyPartExamined = "CHEST"
    ds.ScanOptions = "HELICAL MODE"
    ds.SliceThickness = "2.5"
    ds.KVP = "120"
    ds.DataCollectionDiameter = "500"
    ds.DeviceSerialNumber = "SN-000123"
    ds.SoftwareVersions = ["5.1.2", "RECON-3.4"]
    ds.ProtocolName = "TAP_STANDARD_CONTRAST"
    ds.ReconstructionDiameter = "380"
    ds.DistanceSourceToDetector = "949.075"
    ds.DistanceSourceToPatient = "541"
    ds.GantryDetectorTilt = "0"
    ds.TableHeight = "155.5"
    ds.RotationDirection = "CW"
    ds.ExposureTime = "500"
    ds.XRayTubeCurrent = "250"
    ds.Exposure = "125"
    ds.FilterType = "BODY FILTER"
    ds.GeneratorPower = "30"
    ds.FocalSpots = "0.7"
    ds.DateOfLastCalibration = "20240101"
    ds.TimeOfLastCalibration = "070000"
    ds.ConvolutionKernel = "STANDARD"
    ds.PatientPosition = "FFS"
    ds.RevolutionTime = 0.5
    ds.SingleCollimationWidth = 0.625
    ds.TotalCollimationWidth = 40
    ds.TableSpeed = 78.75
    ds.TableFeedPerRotation = 39.375
    ds.SpiralPitchFactor = 0.984375
    ds.CTDIvol = 12.34
    ds.CTDIPhantomTypeCodeSequence = Sequence(
        [
            _seq_item(
                CodeValue="113691", CodingSchemeDesignator="DCM", CodeMeaning="IEC Body Dosimetry Phantom"
            )
        ]
    )
    ds.EstimatedDoseSaving = 23.5
    # Study / series relationship
    ds.StudyInstanceUID = _S_STUDY_UID
    ds.SeriesInstanceUID = _S_SERIES_UID
    ds.StudyID = _S_STUDYID
    ds.SeriesNumber = _S_SERIESNO
    ds.AcquisitionNumber = "1"
    ds.InstanceNumber = _S_INSTNO
    ds.ImagePositionPatient = ["-190.000", "-190.000", "-100.000"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.FrameOfReferenceUID = _S_FOR_UID
    ds.PositionReferenceIndicator = "XY"
    ds.SliceLocation = _S_Z
    ds.ImageComments = "Synthetic image generated for benchmarking"
    # Image pixel / presentation
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.PixelSpacing = [f"{380 / rows:.6f}", f"{380 / cols:.6f}"]
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.SmallestImagePixelValue = 0
    ds.LargestImagePixelValue = 4095
    ds.BurnedInAnnotation = "NO"
    ds.WindowCenter = ["40", "400"]
    ds.WindowWidth = ["400", "1500"]
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.WindowCenterWidthExplanation = ["SOFT TISSUE", "BONE"]
    ds.LossyImageCompression = "00"
    # Request attributes
    ds.RequestingPhysician = "BERNARD^LUC"
    ds.RequestedProcedureDescription = "CT TAP"
    ds.RequestAttributesSequence = Sequence(
        [
            _seq_item(
                RequestedProcedureID="RP0001",
                ScheduledProcedureStepID="SPS0001",
                ScheduledProcedureStepDescription="CT TAP IV",
            )
        ]
    )
    ds.PerformedProcedureStepStartDate = _S_DATE
    ds.PerformedProcedureStepStartTime = "101000"
    ds.PerformedProcedureStepID = "PPS0001"
    ds.PerformedProcedureStepDescription = "CT TAP"
    ds.StorageMediaFileSetUID = "1.2.826.0.1.3680043.8.498.1.1"
    ds.IrradiationEventUID = "1.2.826.0.1.3680043.8.498.1.2"

    # Private blocks, as scanners write them (creator + a couple dozen elements each)
    vals: list[tuple[str, object]] = [
        ("LO", "RECON_STD"),
        ("SH", "V1"),
        ("DS", "1.25"),
        ("IS", "7"),
        ("US", 3),
        ("SS", -2),
        ("UL", 100000),
        ("FD", 0.5),
        ("FL", 1.5),
        ("CS", "ON"),
        ("LT", "private free text note"),
        ("DA", "20240101"),
        ("TM", "120000"),
        ("UI", "1.2.826.0.1.3680043.8.498.1.3"),
        ("OB", b"\x01\x02"),
    ]
    for group, creator, n in (
        (0x0009, "BENCH_ACQ_01", 40),
        (0x0019, "BENCH_RECON_01", 40),
        (0x0043, "BENCH_RAW_01", 30),
    ):
        block = ds.private_block(group, creator, create=True)
        for j in range(n):
            vr, v = vals[j % len(vals)]
            block.add_new(0x10 + j, vr, v)
    # a vendor blob, as scanners keep their own acquisition header (Siemens CSA-like): brings the
    # ct128 instance to the ~39 KB of the reference corpus
    csa = ds.private_block(0x0029, "BENCH_CSA_01", create=True)
    csa.add_new(0x10, "OB", bytes(random.Random(42).randrange(256) for _ in range(1488)))
    ds.PixelData = _phantom(rows, cols).tobytes()
    return ds


@dataclass
class Template:
    size: str
    data: bytes
    header_len: int  # offset of the PixelData element
    offsets: dict[str, list[int]] = field(default_factory=dict)
    n_elements: int = 0


_FIELDS = {
    "study_uid": _S_STUDY_UID,
    "series_uid": _S_SERIES_UID,
    "sop_uid": _S_SOP_UID,
    "for_uid": _S_FOR_UID,
    "name": _S_NAME,
    "pid": _S_PID,
    "acc": _S_ACC,
    "studyid": _S_STUDYID,
    "date": _S_DATE,
    "birth": _S_BIRTH,
    "seriesno": _S_SERIESNO,
    "instno": _S_INSTNO,
    "z": _S_Z + " ",
}
_SEX_TAG = b"\x10\x00\x40\x00CS\x02\x00"  # (0010,0040) CS len 2


@lru_cache(maxsize=8)
def template(size: str) -> Template:
    ds = build_template(size)
    buf = io.BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    data = buf.getvalue()
    px = data.rfind(b"\xe0\x7f\x10\x00")
    t = Template(size=size, data=data, header_len=px, n_elements=sum(1 for _ in ds.iterall()))
    head = data[:px]
    for key, sentinel in _FIELDS.items():
        s = sentinel.encode()
        offs, start = [], 0
        while (k := head.find(s, start)) >= 0:
            offs.append(k)
            start = k + len(s)
        if not offs:
            raise RuntimeError(f"sentinel for {key} not found")
        t.offsets[key] = offs
    k = head.find(_SEX_TAG)
    t.offsets["sex"] = [k + len(_SEX_TAG)]
    spans = sorted(
        (o, o + len(_FIELDS.get(key, "  ").encode())) for key, offs in t.offsets.items() for o in offs
    )
    if any(a[1] > b[0] for a, b in itertools.pairwise(spans)):
        raise RuntimeError("template sentinels overlap")
    return t


# ---------------------------------------------------------------------------------------------------
# Generator
# ---------------------------------------------------------------------------------------------------


def _name(rng: random.Random) -> str:
    fam = rng.choice(_FAMILY_A) + rng.choice(_FAMILY_B)
    return f"{fam}^{rng.choice(_GIVEN)}"


class Corpus:
    def __init__(self, spec: CorpusSpec) -> None:
        self.spec = spec
        self.t = template(spec.size)
        self._study_cache: dict[int, Study] = {}

    @property
    def instance_size(self) -> int:
        return len(self.t.data)

    def patient(self, p: int) -> Patient:
        rng = random.Random(f"{self.spec.seed}/patient/{p}")
        birth = dt.date(1930, 1, 1) + dt.timedelta(days=rng.randrange(0, 85 * 365))
        return Patient(
            pid=f"BP{self.spec.tag % 100:02d}{p:06d}",
            name=_name(rng),
            birth=birth.strftime("%Y%m%d"),
            sex=rng.choice("MF"),
        )

    def study(self, s: int) -> Study:
        st = self._study_cache.get(s)
        if st is None:
            rng = random.Random(f"{self.spec.seed}/study/{s}")
            p = rng.randrange(self.spec.n_patients)
            date = DATE0 + dt.timedelta(days=rng.randrange(DATE_SPAN_DAYS))
            st = Study(
                index=s,
                uid=uid(self.spec.tag, 1, s),
                patient=self.patient(p),
                date=date.strftime("%Y%m%d"),
                accession=f"A{self.spec.tag:04d}{s:09d}",
            )
            if len(self._study_cache) > 100_000:
                self._study_cache.clear()
            self._study_cache[s] = st
        return st

    def locate(self, i: int) -> tuple[int, int, int]:
        sp = self.spec
        return i // sp.per_study, (i // sp.per_series) % sp.series_per_study, i % sp.per_series

    def series_uid(self, study: int, series: int) -> str:
        return uid(self.spec.tag, 2, study * 1000 + series)

    def sop_uid(self, i: int) -> str:
        return uid(self.spec.tag, 3, i)

    def instance(self, i: int) -> bytes:
        if not 0 <= i < self.spec.count:
            raise IndexError(i)
        s, se, k = self.locate(i)
        st = self.study(s)
        b = bytearray(self.t.data)
        o = self.t.offsets

        def put(key: str, value: bytes) -> None:
            for off in o[key]:
                b[off : off + len(value)] = value

        put("study_uid", st.uid.encode())
        put("series_uid", self.series_uid(s, se).encode())
        put("sop_uid", self.sop_uid(i).encode())
        put("for_uid", uid(self.spec.tag, 4, s * 1000 + se).encode())
        put("name", _pad(st.patient.name, W_NAME))
        put("pid", st.patient.pid.encode())
        put("acc", st.accession.encode())
        put("studyid", f"S{s % 10_000_000:07d}".encode())
        put("date", st.date.encode())
        put("birth", st.patient.birth.encode())
        put("sex", (st.patient.sex + " ").encode())
        put("seriesno", f"{se + 1:<{W_SERIESNO}d}".encode())
        put("instno", f"{k + 1:<{W_INSTNO}d}".encode())
        put("z", f"{-100.0 + 2.5 * k:+0{W_Z}.3f}".encode())
        return bytes(b)

    def iter_instances(self, start: int = 0, stop: int | None = None) -> Iterator[tuple[int, bytes]]:
        stop = self.spec.count if stop is None else min(stop, self.spec.count)
        for i in range(start, stop):
            yield i, self.instance(i)

    # ---- query values drawn from the corpus, so both servers are asked the same things ----

    def query_params(self, n: int, seed: int = 7, upto: int | None = None) -> dict[str, list[str]]:
        """n QIDO query strings per kind, chosen among the corpus' own values (of its first `upto`
        instances when given: the part of the corpus already loaded)."""
        rng = random.Random(seed)
        n_studies = self.spec.n_studies if upto is None else max(1, -(-upto // self.spec.per_study))
        studies = [self.study(rng.randrange(n_studies)) for _ in range(n)]
        pid = [f"PatientID={st.patient.pid}" for st in studies]
        # ASCII prefixes only: Orthanc 1.10 matches no accented prefix (MÜL* finds no MÜLLER), and
        # comparing an empty answer with a real one would flatter it
        name: list[str] = []
        rng2 = random.Random(seed + 1)
        for _ in range(50 * n):
            if len(name) >= n:
                break
            prefix = self.study(rng2.randrange(n_studies)).patient.name[:3]
            if prefix.isascii():
                name.append(f"PatientName={prefix}*")
        date = []
        for st in studies:
            d = dt.datetime.strptime(st.date, "%Y%m%d").date()
            d2 = d + dt.timedelta(days=30)
            date.append(f"StudyDate={d:%Y%m%d}-{d2:%Y%m%d}")
        return {"pid": pid, "name": name, "date": date}

    def series_of(self, s: int) -> list[str]:
        return [self.series_uid(s, se) for se in range(self.spec.series_per_study)]


def write_corpus(spec: CorpusSpec, out: str) -> tuple[int, int, float]:
    """Write the corpus as <out>/<study>/<series>/<sop>.dcm; returns (files, bytes, seconds)."""
    c = Corpus(spec)
    t0 = time.perf_counter()
    nbytes = 0
    made: set[str] = set()
    for i, data in c.iter_instances():
        s, se, _ = c.locate(i)
        d = os.path.join(out, f"{s:07d}", f"{se:03d}")
        if d not in made:
            os.makedirs(d, exist_ok=True)
            made.add(d)
        with open(os.path.join(d, f"{i:09d}.dcm"), "wb") as f:
            f.write(data)
        nbytes += len(data)
    return spec.count, nbytes, time.perf_counter() - t0


def verify_sample(spec: CorpusSpec, n: int = 20) -> None:
    """Parse a sample with pydicom and check every patched field reads back as generated."""
    import pydicom

    c = Corpus(spec)
    rng = random.Random(99)
    for i in sorted({0, spec.count - 1, *(rng.randrange(spec.count) for _ in range(n))}):
        ds = pydicom.dcmread(io.BytesIO(c.instance(i)))
        s, se, k = c.locate(i)
        st = c.study(s)
        assert ds.SOPInstanceUID == c.sop_uid(i) == ds.file_meta.MediaStorageSOPInstanceUID
        assert ds.StudyInstanceUID == st.uid and ds.SeriesInstanceUID == c.series_uid(s, se)
        assert str(ds.PatientName) == st.patient.name, (ds.PatientName, st.patient.name)
        assert ds.PatientID == st.patient.pid and ds.StudyDate == st.date and ds.PatientSex == st.patient.sex
        assert int(ds.InstanceNumber) == k + 1 and int(ds.SeriesNumber) == se + 1
        assert abs(float(ds.SliceLocation) - (-100.0 + 2.5 * k)) < 1e-6
        assert ds.pixel_array.shape == SIZES[spec.size]
        for u in (ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID):
            assert u.is_valid, u


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=list(SIZES), default="ct128")
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--series-per-study", type=int, default=4)
    ap.add_argument("--per-series", type=int, default=25)
    ap.add_argument("--out", help="directory to write .dcm files to (omit: only verify and time)")
    a = ap.parse_args()
    spec = CorpusSpec(
        size=a.size, count=a.count, seed=a.seed, series_per_study=a.series_per_study, per_series=a.per_series
    )
    t = template(a.size)
    print(f"template {a.size}: {len(t.data)} bytes, {t.n_elements} elements, header {t.header_len} bytes")
    verify_sample(spec)
    print("sample verified with pydicom")
    if a.out:
        n, nb, sec = write_corpus(spec, a.out)
        print(f"wrote {n} files, {nb / 1e6:.1f} MB in {sec:.1f}s ({n / sec:.0f} files/s)")
    else:
        c = Corpus(spec)
        t0 = time.perf_counter()
        m = min(spec.count, 20000)
        for _ in c.iter_instances(0, m):
            pass
        sec = time.perf_counter() - t0
        print(f"generated {m} instances in memory in {sec:.2f}s ({m / sec:.0f}/s)")


if __name__ == "__main__":
    main()
