"""A database error names the failed statement but not its values: the text is logged, and the
values of a study's row are patient data."""

from __future__ import annotations

import pytest
from pydicom.uid import generate_uid
from sqlalchemy.exc import IntegrityError

from node.db.engine import Database
from node.db.orm import Study


def test_a_database_error_does_not_carry_patient_data(db: Database) -> None:
    uid = generate_uid()
    with db.write() as session:
        session.add(
            Study(study_instance_uid=uid, patient_id="PID-7731", patient_name="Secret^Patient")
        )
    with pytest.raises(IntegrityError) as caught, db.write() as session:
        session.add(
            Study(study_instance_uid=uid, patient_id="PID-7731", patient_name="Secret^Patient")
        )
    text = str(caught.value)
    assert "INSERT INTO studies" in text  # the statement is still named ...
    assert "Secret^Patient" not in text and "PID-7731" not in text  # ... its values are not
