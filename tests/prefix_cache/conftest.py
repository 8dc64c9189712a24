import pytest
import torch


@pytest.fixture(autouse=True, scope="package")
def one_torch_thread():
    """The engine's model is tiny (d_model 32): with two intra-op threads on a loaded 2-core
    machine its tests ran 7x slower (37.8 s vs 5.2 s for one case), so they use one."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
