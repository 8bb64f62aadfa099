"""The reliability suite reuses the service tests' PhantomCXR fixtures."""

from tests.service.conftest import large_study, orthanc, phantom_studies  # noqa: F401
